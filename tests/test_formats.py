"""Format detection and canonical assembly, checked against the files' raw bytes."""
from __future__ import annotations

import pytest
import torch

from ckpt_edit import copy_ckpt, edit_config, raw_tensor_bytes, rewrite_tensors
from moepack.errors import FormatError
from moepack.example import EXAMPLES
from moepack.formats.assemble import read_canonical, split_canonical
from moepack.formats.detect import describe
from moepack.source.checkpoint import Checkpoint

# name -> (family, quant, moe layers, E, H, I, arrangement, activation kind, limit, routing, has_bias)
EXPECTED = {
    "gpt-oss": ("gpt-oss-mxfp4", "mxfp4", (0, 1), 8, 64, 256, "interleaved", "swiglu_oai", 7.0, "topk_softmax", True),
    "deepseek-v3": ("deepseek-v3-fp8", "fp8_block", (1, 2), 8, 128, 256, "separate", "silu", None, "sigmoid_noaux", False),
    "qwen3-moe": ("qwen3-moe-fp8", "fp8_block", (0, 1), 8, 128, 384, "separate", "silu", None, "softmax_topk", False),
    "nemotron-h": ("modelopt-fp8", "fp8_tensor", (1, 3), 8, 128, 248, "up_only", "relu2", None, "sigmoid_noaux", False),
    "deepseek-v4": ("deepseek-v4-mxfp4", "mxfp4", (0, 1), 8, 128, 256, "separate", "silu", 10.0, "sigmoid_noaux", False),
}


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("name", EXAMPLES)
def test_describe_examples(example_ckpt, name):
    ck = Checkpoint.open(example_ckpt(name))
    d = describe(ck)
    fam, quant, layers, E, H, I, arr, act, limit, routing, bias = EXPECTED[name]
    assert (d.family, d.quant, d.routing.kind) == (fam, quant, routing)
    assert tuple(s.index for s in d.moe_layers) == layers
    for s in d.moe_layers:
        assert (s.num_experts, s.hidden, s.intermediate, s.arrangement, s.has_bias) == (E, H, I, arr, bias)
        assert (s.activation.kind, s.activation.limit) == (act, limit)
        w, _ = d.routing.router_names(s.index)
        assert w in d.passthrough
    assert ck.bytes_materialized == 0, "describe must read headers and config only"
    # every tensor is either pass-through or exactly one canonical piece
    pieces = [p.name for s in d.moe_layers for ct in s.tensors.values() for p in ct.pieces]
    assert len(pieces) == len(set(pieces))
    assert sorted(pieces + list(d.passthrough)) == sorted(ck.tensor_names())


def test_routing_constants(example_ckpt):
    d = describe(Checkpoint.open(example_ckpt("deepseek-v3")))
    r = d.routing
    assert (r.top_k, r.n_group, r.topk_group, r.routed_scaling_factor, r.norm_topk_prob) == (2, 4, 2, 2.5, True)
    assert r.router_names(1) == ("model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias")
    g = describe(Checkpoint.open(example_ckpt("gpt-oss")))
    assert g.moe_layers[0].activation.alpha == 1.702
    assert g.routing.router_names(0) == ("model.layers.0.mlp.router.weight", "model.layers.0.mlp.router.bias")


@pytest.mark.parametrize("name", EXAMPLES)
def test_canonical_round_trip_matches_file_bytes(example_ckpt, name):
    root = example_ckpt(name)
    ck = Checkpoint.open(root)
    spec = describe(ck).moe_layers[-1]
    for role, ct in spec.tensors.items():
        t = read_canonical(ck, ct)
        assert tuple(t.shape) == ct.shape and str(t.dtype) == f"torch.{ct.dtype}"
        parts = split_canonical(t, ct)
        assert set(parts) == {p.name for p in ct.pieces}
        for src_name, part in parts.items():
            assert _raw(part) == raw_tensor_bytes(root, ck.info(src_name).file, src_name), (role, src_name)


def test_separate_canonical_is_gate_then_up(example_ckpt):
    """Independent check of the [gate; up] arrangement: rows of canonical w13 vs the raw file bytes."""
    root = example_ckpt("qwen3-moe")
    ck = Checkpoint.open(root)
    spec = describe(ck).moe_layers[0]
    w13 = read_canonical(ck, spec.tensors["w13_weight"])
    I, e = spec.intermediate, 5
    for half, proj in ((0, "gate_proj"), (1, "up_proj")):
        n = f"model.layers.0.mlp.experts.{e}.{proj}.weight"
        assert _raw(w13[e, half * I:(half + 1) * I]) == raw_tensor_bytes(root, ck.info(n).file, n)
    s13 = read_canonical(ck, spec.tensors["w13_weight_scale"])
    assert s13.shape == (8, 2 * 3, 1)            # I=384 -> 3 blocks per half, H=128 -> 1
    n = f"model.layers.0.mlp.experts.{e}.up_proj.weight_scale_inv"
    assert _raw(s13[e, 3:6]) == raw_tensor_bytes(root, ck.info(n).file, n)


def test_v4_accepts_f4_and_u8_dtypes(example_ckpt, tmp_path):
    root = copy_ckpt(example_ckpt("deepseek-v4"), tmp_path / "c")
    before = Checkpoint.open(example_ckpt("deepseek-v4"))
    ref = read_canonical(before, describe(before).moe_layers[0].tensors["w13_weight"])

    def to_f4_u8(name, t):
        if ".experts." in name and name.endswith(".weight"):
            return t.view(torch.uint8).view(torch.float4_e2m1fn_x2)
        if ".experts." in name and name.endswith(".scale"):
            return t.view(torch.uint8)
        return t

    rewrite_tensors(root, to_f4_u8)
    ck = Checkpoint.open(root)
    assert ck.info("layers.0.ffn.experts.0.w1.weight").dtype == "F4"
    spec = describe(ck).moe_layers[0]
    assert torch.equal(read_canonical(ck, spec.tensors["w13_weight"]), ref)
    ct = spec.tensors["w13_weight"]
    parts = split_canonical(read_canonical(ck, ct), ct)
    assert parts["layers.0.ffn.experts.0.w1.weight"].dtype == torch.float4_e2m1fn_x2


# ---------------------------------------------------------------- bad inputs -> FormatError naming the culprit
def _broken(example_ckpt, tmp_path, name):
    return copy_ckpt(example_ckpt(name), tmp_path / "c")


def _fails(root, match):
    with pytest.raises(FormatError, match=match) as err:
        describe(Checkpoint.open(root))
    assert "\n" not in str(err.value)


def test_scale_wrong_dtype(example_ckpt, tmp_path):
    root = _broken(example_ckpt, tmp_path, "gpt-oss")
    bad = "model.layers.1.mlp.experts.gate_up_proj_scales"
    rewrite_tensors(root, lambda n, t: t.to(torch.float32) if n == bad else t)
    _fails(root, f"{bad} has dtype F32")


def test_scale_wrong_shape(example_ckpt, tmp_path):
    root = _broken(example_ckpt, tmp_path, "deepseek-v3")
    bad = "model.layers.2.mlp.experts.3.down_proj.weight_scale_inv"
    rewrite_tensors(root, lambda n, t: torch.ones(1, 1) if n == bad else t)
    _fails(root, f"{bad} has shape")


def test_missing_scale(example_ckpt, tmp_path):
    root = _broken(example_ckpt, tmp_path, "nemotron-h")
    bad = "backbone.layers.3.mixer.experts.2.down_proj.weight_scale"
    rewrite_tensors(root, lambda n, t: None if n == bad else t)
    _fails(root, f"missing tensor {bad}")


def test_v4_scale_wrong_dtype(example_ckpt, tmp_path):
    root = _broken(example_ckpt, tmp_path, "deepseek-v4")
    bad = "layers.1.ffn.experts.4.w3.scale"
    rewrite_tensors(root, lambda n, t: t.view(torch.uint8).to(torch.float32) if n == bad else t)
    _fails(root, f"{bad} has dtype F32")


def test_unknown_quant_method(example_ckpt, tmp_path):
    root = _broken(example_ckpt, tmp_path, "qwen3-moe")
    edit_config(root, quantization_config={"quant_method": "awq"})
    _fails(root, "quant_method 'awq'")


def test_no_quantization_config(example_ckpt, tmp_path):
    root = _broken(example_ckpt, tmp_path, "qwen3-moe")
    edit_config(root, quantization_config=None)
    _fails(root, "no quantization_config")


@pytest.mark.parametrize("name,key,value,match", [
    ("gpt-oss", "num_local_experts", 16, "gate_up_proj_blocks holds 8 experts"),
    ("gpt-oss", "intermediate_size", 128, "gate_up_proj_blocks has 512 gate/up rows"),
    ("deepseek-v3", "n_routed_experts", 16, "expert 8 is missing"),
    ("deepseek-v3", "first_k_dense_replace", 0, "MoE layers \\[0\\]"),
    ("qwen3-moe", "hidden_size", 256, "model.layers.0.mlp.experts.0.gate_proj.weight"),
    ("nemotron-h", "moe_intermediate_size", 256, "up_proj.weight has 248 rows"),
    ("nemotron-h", "hybrid_override_pattern", "MEEE", "MoE layers \\[2\\]"),
    ("deepseek-v4", "n_routed_experts", 4, "layers.0.ffn.experts.4.w1.weight exists"),
    ("deepseek-v4", "moe_intermediate_size", 512, "w1.weight has 256 rows"),
])
def test_config_contradicting_tensors(example_ckpt, tmp_path, name, key, value, match):
    root = _broken(example_ckpt, tmp_path, name)
    edit_config(root, **{key: value})
    _fails(root, match)
