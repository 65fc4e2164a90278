"""gpt-oss MXFP4: fused expert tensors per layer, gate/up interleaved by row.

    model.layers.{l}.mlp.experts.gate_up_proj_blocks  [E, 2I, H/32, 16] U8   (packed e2m1, low nibble first)
    model.layers.{l}.mlp.experts.gate_up_proj_scales  [E, 2I, H/32]     U8   (e8m0 codes)
    model.layers.{l}.mlp.experts.gate_up_proj_bias    [E, 2I]           BF16
    model.layers.{l}.mlp.experts.down_proj_blocks     [E, H, I/32, 16]  U8
    model.layers.{l}.mlp.experts.down_proj_scales     [E, H, I/32]      U8
    model.layers.{l}.mlp.experts.down_proj_bias       [E, H]            BF16
    model.layers.{l}.mlp.router.{weight [E, H], bias [E]}
"""
from __future__ import annotations

from ..errors import FormatError
from ..numerics import MX_BLOCK
from ..source.checkpoint import Checkpoint, torch_dtype
from .model import Activation, ModelDescription, MoELayerSpec, Routing
from .tensor_checks import (canonical, cfg, cfg_int, check_layers, expect, fused_piece, layer_indices,
                            passthrough, piece_names)

FAMILY = "gpt-oss-mxfp4"
_EXPERTS = r"^model\.layers\.(?P<layer>\d+)\.mlp\.experts\.gate_up_proj_blocks$"
_SCALE_DTYPES = ("U8", "F8_E8M0")
_BIAS_DTYPES = ("BF16", "F16", "F32")



def describe(ckpt: Checkpoint) -> ModelDescription:
    c = ckpt.config
    L = cfg_int(c, "num_hidden_layers")
    E = cfg_int(c, "num_local_experts", "num_experts")
    top_k = cfg_int(c, "num_experts_per_tok", "experts_per_token")
    H = cfg_int(c, "hidden_size")
    I_cfg = cfg_int(c, "intermediate_size")
    limit = float(cfg(c, "swiglu_limit", default=7.0))
    if H % MX_BLOCK:
        raise FormatError(f"config.json: hidden_size {H} is not a multiple of {MX_BLOCK} (mxfp4 block)")
    layers = layer_indices(ckpt.tensor_names(), _EXPERTS)
    if not layers:
        raise FormatError("config.json says quant_method mxfp4 (gpt-oss) but no tensor "
                          "model.layers.*.mlp.experts.gate_up_proj_blocks exists")
    check_layers(set(layers), set(range(L)), "gate_up_proj_blocks")
    specs = []
    for l in sorted(layers):
        x = f"model.layers.{l}.mlp.experts"
        blocks = ckpt.info(f"{x}.gate_up_proj_blocks")
        if blocks.dtype != "U8" or len(blocks.shape) != 4 or blocks.shape[3] != 16:
            raise FormatError(f"{blocks.file}: tensor {blocks.name} has {blocks.dtype} {list(blocks.shape)}, "
                              f"expected U8 [E, 2I, H/32, 16]")
        I = blocks.shape[1] // 2
        if blocks.shape[0] != E:
            raise FormatError(f"{blocks.file}: tensor {blocks.name} holds {blocks.shape[0]} experts, "
                              f"config.json num_local_experts is {E}")
        if I != I_cfg or blocks.shape[1] % 2:
            raise FormatError(f"{blocks.file}: tensor {blocks.name} has {blocks.shape[1]} gate/up rows, "
                              f"config.json intermediate_size {I_cfg} needs {2 * I_cfg}")
        expect(ckpt, blocks.name, "U8", (E, 2 * I, H // MX_BLOCK, 16), f"hidden_size {H}")
        if I % MX_BLOCK:
            raise FormatError(f"config.json: intermediate_size {I} is not a multiple of {MX_BLOCK} (mxfp4 block)")
        gs = expect(ckpt, f"{x}.gate_up_proj_scales", _SCALE_DTYPES, (E, 2 * I, H // MX_BLOCK), "one e8m0 per 32 along H")
        gb = expect(ckpt, f"{x}.gate_up_proj_bias", _BIAS_DTYPES, (E, 2 * I))
        db = expect(ckpt, f"{x}.down_proj_blocks", "U8", (E, H, I // MX_BLOCK, 16))
        ds = expect(ckpt, f"{x}.down_proj_scales", _SCALE_DTYPES, (E, H, I // MX_BLOCK), "one e8m0 per 32 along I")
        dbias = expect(ckpt, f"{x}.down_proj_bias", _BIAS_DTYPES, (E, H))
        R = 2 * I
        bias_dtype = str(torch_dtype(gb.dtype)).removeprefix("torch.")
        down_bias_dtype = str(torch_dtype(dbias.dtype)).removeprefix("torch.")
        tensors = {
            "w13_weight": canonical("w13_weight", (E, R, H // 2), "uint8", [fused_piece(blocks, (0, R), blocks.shape)]),
            "w13_weight_scale": canonical("w13_weight_scale", (E, R, H // MX_BLOCK), "uint8",
                                          [fused_piece(gs, (0, R), gs.shape)]),
            "w13_bias": canonical("w13_bias", (E, R), bias_dtype, [fused_piece(gb, (0, R), gb.shape)]),
            "w2_weight": canonical("w2_weight", (E, H, I // 2), "uint8", [fused_piece(db, (0, H), db.shape)]),
            "w2_weight_scale": canonical("w2_weight_scale", (E, H, I // MX_BLOCK), "uint8",
                                         [fused_piece(ds, (0, H), ds.shape)]),
            "w2_bias": canonical("w2_bias", (E, H), down_bias_dtype, [fused_piece(dbias, (0, H), dbias.shape)]),
        }
        expect(ckpt, f"model.layers.{l}.mlp.router.weight", _BIAS_DTYPES, (E, H), "router: experts x hidden")
        expect(ckpt, f"model.layers.{l}.mlp.router.bias", _BIAS_DTYPES, (E,))
        specs.append(MoELayerSpec(l, E, H, I, "mxfp4", "interleaved",
                                  Activation("swiglu_oai", alpha=1.702, limit=limit), True, tensors))
    routing = Routing("topk_softmax", top_k, norm_topk_prob=True,
                      router_weight="model.layers.{layer}.mlp.router.weight",
                      router_bias="model.layers.{layer}.mlp.router.bias")
    return ModelDescription(FAMILY, "mxfp4", L, tuple(specs), routing,
                            passthrough(ckpt, piece_names(specs)), dict(c))
