"""ModelOpt FP8 per-tensor (NemotronH): ungated relu^2 experts with scalar scales.

    backbone.layers.{l}.mixer.experts.{e}.up_proj.weight     [I, H] F8_E4M3   (+ weight_scale [], input_scale [] F32)
    backbone.layers.{l}.mixer.experts.{e}.down_proj.weight   [H, I] F8_E4M3   (+ weight_scale [], input_scale [] F32)
    router: backbone.layers.{l}.mixer.gate.weight [E, H] + mixer.gate.e_score_correction_bias [E]

Canonical w13 holds only the up rows ("up_only"); per-tensor scales become [E, 1] float32.
MoE layers are the `E` characters of config `hybrid_override_pattern`.
"""
from __future__ import annotations

from ..errors import FormatError
from ..source.checkpoint import Checkpoint
from .model import Activation, ModelDescription, MoELayerSpec
from .tensor_checks import (canonical, cfg, cfg_int, check_experts, check_layers, expect, expert_ids, expert_piece,
                            layer_indices, passthrough, piece_names, sigmoid_noaux_routing)

FAMILY = "modelopt-fp8"
_LAYER = r"^backbone\.layers\.(?P<layer>\d+)\.mixer\.experts\.\d+\.up_proj\.weight$"
_SCALAR_SHAPES = ((), (1,))



def _scalar(ckpt: Checkpoint, name: str):
    info = expect(ckpt, name, "F32", None)
    if info.shape not in _SCALAR_SHAPES:
        raise FormatError(f"{info.file}: tensor {name} has shape {list(info.shape)}, expected a scalar ([] or [1])")
    return info


def _moe_layers_from_config(c: dict, L: int) -> set[int]:
    pattern = cfg(c, "hybrid_override_pattern")
    if not isinstance(pattern, str) or len(pattern) != L:
        raise FormatError(f"config.json: hybrid_override_pattern {pattern!r} does not have num_hidden_layers={L} characters")
    return {l for l, ch in enumerate(pattern) if ch == "E"}


def describe(ckpt: Checkpoint) -> ModelDescription:
    c = ckpt.config
    qc = c.get("quantization_config") or {}
    algo = str(qc.get("quant_algo", "")).upper()
    if algo != "FP8":
        raise FormatError(f"config.json: quantization_config.quant_algo {qc.get('quant_algo')!r} is not supported "
                          f"for modelopt (only 'FP8' per-tensor)")
    act = cfg(c, "mlp_hidden_act", default="relu2")
    if act != "relu2":
        raise FormatError(f"config.json: mlp_hidden_act {act!r} is not supported for {FAMILY} (only 'relu2')")
    L = cfg_int(c, "num_hidden_layers")
    E = cfg_int(c, "n_routed_experts")
    H = cfg_int(c, "hidden_size")
    I_cfg = cfg_int(c, "moe_intermediate_size")
    top_k = cfg_int(c, "num_experts_per_tok")
    names = ckpt.tensor_names()
    found = layer_indices(names, _LAYER)
    if not found:
        raise FormatError("config.json says quant_method modelopt but no tensor backbone.layers.*.mixer.experts.*.up_proj.weight exists")
    check_layers(set(found), _moe_layers_from_config(c, L), "mixer.experts.*.up_proj.weight")
    specs = []
    for l in sorted(found):
        prefix = f"backbone.layers.{l}.mixer.experts"
        check_experts(expert_ids(names, "^" + prefix.replace(".", r"\.") + r"\.(?P<expert>\d+)\.up_proj\.weight$"),
                      E, f"layer {l}", f"{prefix}.{{e}}.up_proj.weight")
        gate = f"{prefix}.0.gate_proj.weight"
        if gate in ckpt:
            raise FormatError(f"{ckpt.info(gate).file}: tensor {gate} exists but modelopt NemotronH experts are "
                              f"not gated (relu2, up_proj only)")
        I = expect(ckpt, f"{prefix}.0.up_proj.weight", "F8_E4M3", None).shape[0]
        if I != I_cfg:
            raise FormatError(f"tensor {prefix}.0.up_proj.weight has {I} rows, config.json moe_intermediate_size is {I_cfg}")
        roles: dict[str, list] = {r: [] for r in ("w13_weight", "w13_weight_scale", "w13_input_scale",
                                                  "w2_weight", "w2_weight_scale", "w2_input_scale")}
        for e in range(E):
            x = f"{prefix}.{e}"
            for w_role, proj, shape in (("w13", "up_proj", (I, H)), ("w2", "down_proj", (H, I))):
                w = expect(ckpt, f"{x}.{proj}.weight", "F8_E4M3", shape, f"hidden_size {H}, moe_intermediate_size {I}")
                roles[f"{w_role}_weight"].append(expert_piece(w, e, (0, shape[0])))
                roles[f"{w_role}_weight_scale"].append(expert_piece(_scalar(ckpt, f"{x}.{proj}.weight_scale"), e, (0, 1)))
                roles[f"{w_role}_input_scale"].append(expert_piece(_scalar(ckpt, f"{x}.{proj}.input_scale"), e, (0, 1)))
        tensors = {
            "w13_weight": canonical("w13_weight", (E, I, H), "float8_e4m3fn", roles["w13_weight"]),
            "w2_weight": canonical("w2_weight", (E, H, I), "float8_e4m3fn", roles["w2_weight"]),
        }
        for role in ("w13_weight_scale", "w13_input_scale", "w2_weight_scale", "w2_input_scale"):
            tensors[role] = canonical(role, (E, 1), "float32", roles[role])
        router = f"backbone.layers.{l}.mixer.gate"
        expect(ckpt, f"{router}.weight", ("F32", "BF16", "F16"), (E, H), "router: experts x hidden")
        expect(ckpt, f"{router}.e_score_correction_bias", ("F32", "BF16"), (E,))
        specs.append(MoELayerSpec(l, E, H, I, "fp8_tensor", "up_only", Activation("relu2"), False, tensors))
    routing = sigmoid_noaux_routing(c, top_k, "backbone.layers.{layer}.mixer.gate.weight",
                                    "backbone.layers.{layer}.mixer.gate.e_score_correction_bias")
    return ModelDescription(FAMILY, "fp8_tensor", L, tuple(specs), routing,
                            passthrough(ckpt, piece_names(specs)), dict(c))
