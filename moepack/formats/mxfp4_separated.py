"""DeepSeek-V4 MXFP4 experts: per-expert w1 (gate), w3 (up), w2 (down), already SEPARATED.

    layers.{l}.ffn.experts.{e}.w1.weight  [I, H/2] U8/I8 packed e2m1 (or F4 with header shape [I, H])
    layers.{l}.ffn.experts.{e}.w1.scale   [I, H/32] F8_E8M0 or U8 (bytes read as e8m0 codes)
    layers.{l}.ffn.experts.{e}.w3.*       like w1
    layers.{l}.ffn.experts.{e}.w2.weight  [H, I/2], .scale [H, I/32]
    router: layers.{l}.ffn.gate.weight [E, H], layers.{l}.ffn.gate.bias [E] (score-correction bias)

Canonical w13 is [w1; w3] ("separate"): never de-interleaved.
"""
from __future__ import annotations

from ..errors import FormatError
from ..numerics import MX_BLOCK
from ..source.checkpoint import Checkpoint, TensorInfo
from .model import Activation, ModelDescription, MoELayerSpec
from .tensor_checks import (canonical, cfg, cfg_int, check_experts, check_layers, expect, expert_ids, expert_piece,
                            layer_indices, passthrough, piece_names, sigmoid_noaux_routing)

FAMILY = "deepseek-v4-mxfp4"
QUANT_METHOD = "deepseek_v4_fp8"
_LAYER = r"^layers\.(?P<layer>\d+)\.ffn\.experts\.\d+\.w1\.weight$"
_WEIGHT_DTYPES = ("U8", "I8", "F4")
_SCALE_DTYPES = ("F8_E8M0", "U8")



def _packed(ckpt: Checkpoint, name: str, rows: int, k: int) -> TensorInfo:
    """A packed FP4 weight [rows, k/2] bytes (header [rows, k] when F4)."""
    info = expect(ckpt, name, _WEIGHT_DTYPES, None)
    want = (rows, k) if info.dtype == "F4" else (rows, k // 2)
    return expect(ckpt, name, info.dtype, want, f"packed FP4 of [{rows}, {k}]")


def describe(ckpt: Checkpoint) -> ModelDescription:
    c = ckpt.config
    qc = c.get("quantization_config") or {}
    expert_dtype = qc.get("expert_dtype", "fp4")
    if expert_dtype != "fp4":
        raise FormatError(f"config.json: quantization_config.expert_dtype {expert_dtype!r} is not supported "
                          f"for {FAMILY} (only 'fp4')")
    L = cfg_int(c, "num_hidden_layers")
    E = cfg_int(c, "n_routed_experts")
    H = cfg_int(c, "hidden_size")
    I_cfg = cfg_int(c, "moe_intermediate_size")
    top_k = cfg_int(c, "num_experts_per_tok")
    limit = cfg(c, "swiglu_limit", default=None, required=False)
    names = ckpt.tensor_names()
    found = layer_indices(names, _LAYER)
    if not found:
        raise FormatError(f"config.json says quant_method {QUANT_METHOD} but no tensor layers.*.ffn.experts.*.w1.weight exists")
    first_dense = cfg_int(c, "first_k_dense_replace", default=0)
    check_layers(set(found), set(range(first_dense, L)), "ffn.experts.*.w1.weight")
    if H % MX_BLOCK or I_cfg % MX_BLOCK:
        raise FormatError(f"config.json: hidden_size {H} and moe_intermediate_size {I_cfg} must be multiples of {MX_BLOCK}")
    specs = []
    for l in sorted(found):
        prefix = f"layers.{l}.ffn.experts"
        check_experts(expert_ids(names, r"^layers\." + str(l) + r"\.ffn\.experts\.(?P<expert>\d+)\.w1\.weight$"),
                      E, f"layer {l}", f"{prefix}.{{e}}.w1.weight")
        I = I_cfg
        w1 = ckpt.info(f"{prefix}.0.w1.weight")
        rows = w1.shape[0] if w1.shape else 0
        if rows != I:
            raise FormatError(f"{w1.file}: tensor {w1.name} has {rows} rows, config.json moe_intermediate_size is {I}")
        roles: dict[str, list] = {r: [] for r in ("w13_weight", "w13_weight_scale", "w2_weight", "w2_weight_scale")}
        for e in range(E):
            x = f"{prefix}.{e}"
            for half, w in ((0, "w1"), (1, "w3")):
                wi = _packed(ckpt, f"{x}.{w}.weight", I, H)
                si = expect(ckpt, f"{x}.{w}.scale", _SCALE_DTYPES, (I, H // MX_BLOCK), "one e8m0 per 32 along H")
                roles["w13_weight"].append(expert_piece(wi, e, (half * I, (half + 1) * I)))
                roles["w13_weight_scale"].append(expert_piece(si, e, (half * I, (half + 1) * I)))
            wi = _packed(ckpt, f"{x}.w2.weight", H, I)
            si = expect(ckpt, f"{x}.w2.scale", _SCALE_DTYPES, (H, I // MX_BLOCK), "one e8m0 per 32 along I")
            roles["w2_weight"].append(expert_piece(wi, e, (0, H)))
            roles["w2_weight_scale"].append(expert_piece(si, e, (0, H)))
        tensors = {
            "w13_weight": canonical("w13_weight", (E, 2 * I, H // 2), "uint8", roles["w13_weight"]),
            "w13_weight_scale": canonical("w13_weight_scale", (E, 2 * I, H // MX_BLOCK), "uint8", roles["w13_weight_scale"]),
            "w2_weight": canonical("w2_weight", (E, H, I // 2), "uint8", roles["w2_weight"]),
            "w2_weight_scale": canonical("w2_weight_scale", (E, H, I // MX_BLOCK), "uint8", roles["w2_weight_scale"]),
        }
        expect(ckpt, f"layers.{l}.ffn.gate.weight", ("BF16", "F32", "F16"), (E, H), "router: experts x hidden")
        expect(ckpt, f"layers.{l}.ffn.gate.bias", ("F32", "BF16"), (E,))
        act = Activation("silu", limit=float(limit) if limit is not None else None)
        specs.append(MoELayerSpec(l, E, H, I, "mxfp4", "separate", act, False, tensors))
    routing = sigmoid_noaux_routing(c, top_k, "layers.{layer}.ffn.gate.weight", "layers.{layer}.ffn.gate.bias")
    return ModelDescription(FAMILY, "mxfp4", L, tuple(specs), routing, passthrough(ckpt, piece_names(specs)), dict(c))
