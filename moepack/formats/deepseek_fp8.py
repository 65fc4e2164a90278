"""FP8 block-scaled per-expert checkpoints: DeepSeek-V3/R1 and Qwen3-MoE.

    model.layers.{l}.mlp.experts.{e}.{gate_proj,up_proj}.weight            [I, H] F8_E4M3
    model.layers.{l}.mlp.experts.{e}.{gate_proj,up_proj}.weight_scale_inv  [ceil(I/128), ceil(H/128)] F32
    model.layers.{l}.mlp.experts.{e}.down_proj.weight                      [H, I] F8_E4M3
    model.layers.{l}.mlp.experts.{e}.down_proj.weight_scale_inv            [ceil(H/128), ceil(I/128)] F32
    router: model.layers.{l}.mlp.gate.weight [E, H] (+ DeepSeek: mlp.gate.e_score_correction_bias [E])

Canonical w13 is [gate; up] ("separate"); w13 scales are [gate blocks; up blocks].
DeepSeek dense layers (`first_k_dense_replace`) and `shared_experts` pass through.
"""
from __future__ import annotations

from ..errors import FormatError
from ..numerics import FP8_BLOCK
from ..source.checkpoint import Checkpoint
from .model import Activation, CanonicalTensor, ModelDescription, MoELayerSpec, Routing
from .tensor_checks import (canonical, cfg, cfg_int, check_experts, check_layers, expect, expert_ids, expert_piece,
                            layer_indices, passthrough, piece_names, sigmoid_noaux_routing)

DEEPSEEK_FAMILY = "deepseek-v3-fp8"
QWEN3_FAMILY = "qwen3-moe-fp8"
_LAYER = r"^model\.layers\.(?P<layer>\d+)\.mlp\.experts\.\d+\.gate_proj\.weight$"
_SCALE_DTYPES = ("F32", "BF16")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_block_size(qc: dict) -> None:
    block = qc.get("weight_block_size")
    if block is not None and list(block) != [FP8_BLOCK, FP8_BLOCK]:
        raise FormatError(f"config.json: quantization_config.weight_block_size {block} is not supported "
                          f"(only [{FP8_BLOCK}, {FP8_BLOCK}])")


def is_qwen3(ckpt: Checkpoint) -> bool:
    c = ckpt.config
    return c.get("model_type") == "qwen3_moe" or ("num_experts" in c and "n_routed_experts" not in c)


def fp8_block_layer(ckpt: Checkpoint, prefix: str, l: int, E: int, H: int, I_cfg: int) -> MoELayerSpec:
    """One MoE layer of per-expert `{prefix}.{e}.{gate,up,down}_proj.weight` + `weight_scale_inv` tensors."""
    names = ckpt.tensor_names()
    rx = "^" + prefix.replace(".", r"\.") + r"\.(?P<expert>\d+)\.gate_proj\.weight$"
    check_experts(expert_ids(names, rx), E, f"layer {l}", f"{prefix}.{{e}}.gate_proj.weight")
    gate0 = expect(ckpt, f"{prefix}.0.gate_proj.weight", "F8_E4M3", None)
    if len(gate0.shape) != 2 or gate0.shape[1] != H:
        raise FormatError(f"{gate0.file}: tensor {gate0.name} has shape {list(gate0.shape)}, "
                          f"expected [moe_intermediate_size, hidden_size {H}]")
    I = gate0.shape[0]
    if I != I_cfg:
        raise FormatError(f"{gate0.file}: tensor {gate0.name} has {I} rows, config.json moe_intermediate_size is {I_cfg}")
    IB, HB = _cdiv(I, FP8_BLOCK), _cdiv(H, FP8_BLOCK)
    pieces: dict[str, list] = {"w13_weight": [], "w13_weight_scale": [], "w2_weight": [], "w2_weight_scale": []}
    for e in range(E):
        x = f"{prefix}.{e}"
        for half, proj in ((0, "gate_proj"), (1, "up_proj")):
            w = expect(ckpt, f"{x}.{proj}.weight", "F8_E4M3", (I, H), f"moe_intermediate_size {I}, hidden_size {H}")
            s = expect(ckpt, f"{x}.{proj}.weight_scale_inv", _SCALE_DTYPES, (IB, HB), "one scale per 128x128 block")
            pieces["w13_weight"].append(expert_piece(w, e, (half * I, (half + 1) * I)))
            pieces["w13_weight_scale"].append(expert_piece(s, e, (half * IB, (half + 1) * IB)))
        w = expect(ckpt, f"{x}.down_proj.weight", "F8_E4M3", (H, I), f"hidden_size {H}, moe_intermediate_size {I}")
        s = expect(ckpt, f"{x}.down_proj.weight_scale_inv", _SCALE_DTYPES, (HB, IB), "one scale per 128x128 block")
        pieces["w2_weight"].append(expert_piece(w, e, (0, H)))
        pieces["w2_weight_scale"].append(expert_piece(s, e, (0, HB)))
    scale_dtypes = {p.dtype for role in ("w13_weight_scale", "w2_weight_scale") for p in pieces[role]}
    if len(scale_dtypes) != 1:
        raise FormatError(f"layer {l}: weight_scale_inv tensors mix dtypes {sorted(scale_dtypes)}")
    sdt = "float32" if scale_dtypes == {"F32"} else "bfloat16"
    tensors: dict[str, CanonicalTensor] = {
        "w13_weight": canonical("w13_weight", (E, 2 * I, H), "float8_e4m3fn", pieces["w13_weight"]),
        "w13_weight_scale": canonical("w13_weight_scale", (E, 2 * IB, HB), sdt, pieces["w13_weight_scale"]),
        "w2_weight": canonical("w2_weight", (E, H, I), "float8_e4m3fn", pieces["w2_weight"]),
        "w2_weight_scale": canonical("w2_weight_scale", (E, HB, IB), sdt, pieces["w2_weight_scale"]),
    }
    return MoELayerSpec(l, E, H, I, "fp8_block", "separate", Activation("silu"), False, tensors)


def _moe_layers_from_config(c: dict, L: int, qwen: bool) -> set[int]:
    if qwen:
        step = cfg_int(c, "decoder_sparse_step", default=1) or 1
        only_mlp = set(cfg(c, "mlp_only_layers", default=[], required=False) or [])
        return {l for l in range(L) if l not in only_mlp and (l + 1) % step == 0}
    first_dense = cfg_int(c, "first_k_dense_replace", default=0)
    freq = cfg_int(c, "moe_layer_freq", default=1) or 1
    return {l for l in range(first_dense, L) if l % freq == 0}


def describe(ckpt: Checkpoint) -> ModelDescription:
    c = ckpt.config
    qc = c.get("quantization_config") or {}
    check_block_size(qc)
    qwen = is_qwen3(ckpt)
    L = cfg_int(c, "num_hidden_layers")
    E = cfg_int(c, "num_experts" if qwen else "n_routed_experts")
    H = cfg_int(c, "hidden_size")
    I_cfg = cfg_int(c, "moe_intermediate_size")
    top_k = cfg_int(c, "num_experts_per_tok")
    found = layer_indices(ckpt.tensor_names(), _LAYER)
    if not found:
        raise FormatError("config.json says quant_method fp8 but no tensor model.layers.*.mlp.experts.*.gate_proj.weight exists")
    check_layers(set(found), _moe_layers_from_config(c, L, qwen), "mlp.experts.*.gate_proj.weight")
    specs = []
    for l in sorted(found):
        specs.append(fp8_block_layer(ckpt, f"model.layers.{l}.mlp.experts", l, E, H, I_cfg))
        expect(ckpt, f"model.layers.{l}.mlp.gate.weight", ("BF16", "F32", "F16"), (E, H), "router: experts x hidden")
        if not qwen:
            expect(ckpt, f"model.layers.{l}.mlp.gate.e_score_correction_bias", ("F32", "BF16"), (E,))
    router = "model.layers.{layer}.mlp.gate.weight"
    if qwen:
        family = QWEN3_FAMILY
        routing = Routing("softmax_topk", top_k, norm_topk_prob=bool(cfg(c, "norm_topk_prob", default=False, required=False)),
                          router_weight=router)
    else:
        family = DEEPSEEK_FAMILY
        scoring = cfg(c, "scoring_func", default="sigmoid")
        if scoring != "sigmoid":
            raise FormatError(f"config.json: scoring_func {scoring!r} is not supported for {family} (only 'sigmoid')")
        routing = sigmoid_noaux_routing(c, top_k, router, "model.layers.{layer}.mlp.gate.e_score_correction_bias")
    return ModelDescription(family, "fp8_block", L, tuple(specs), routing,
                            passthrough(ckpt, piece_names(specs)), dict(c))
