"""Summing `MoELayer` outputs over every rank equals the unsharded layer, computed independently in
float64 from the SOURCE checkpoint's dequantized weights (not from the converted folder)."""
from __future__ import annotations

import glob

import pytest
import torch
from safetensors import safe_open

from moepack.example import EXAMPLES
from moepack.formats.assemble import read_canonical
from moepack.formats.detect import describe
from moepack.numerics import dequant_mxfp4
from moepack.runtime import load
from moepack.kernels.dense_reference import dense_moe_float64
from moepack.source.checkpoint import Checkpoint

PARALLEL = [(1, 1), (2, 1), (4, 1), (2, 2)]          # (tp, ep); (2, 2): two EP ranks, each with all of I
RTOL = 1e-5                                           # float32 reference path vs float64


def _tokens(T: int, H: int, E: int, k: int, seed: int):
    """x [T, H], weights [T, k] f32, ids [T, k] int32: k distinct experts per token, every expert used
    when T * k >= E."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g)
    rows = [torch.arange(t * k, (t + 1) * k) if (t + 1) * k <= E else torch.randperm(E, generator=g)[:k]
            for t in range(T)]
    ids = torch.stack(rows).to(torch.int32)
    w = torch.rand(T, k, generator=g) + 0.1
    return x, (w / w.sum(-1, keepdim=True)).float(), ids


def _source_layers(src):
    ckpt = Checkpoint.open(src)
    desc = describe(ckpt)
    return {spec.index: (spec, {role: read_canonical(ckpt, ct) for role, ct in spec.tensors.items()})
            for spec in desc.moe_layers}


def _rank_sum(folder, layer, x, w, ids, world, **kw):
    total = torch.zeros(x.shape, dtype=torch.float64)
    for r in range(world):
        ck = load(folder, rank=r, **kw)
        total += ck.moe_layers[layer](x, w, ids).double()
    return total


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def source_layers(example_ckpt):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _source_layers(example_ckpt(name))
        return cache[name]

    return get


@pytest.mark.parametrize("tp,ep", PARALLEL, ids=[f"tp{t}-ep{e}" for t, e in PARALLEL])
@pytest.mark.parametrize("name", EXAMPLES)
def test_rank_outputs_sum_to_the_unsharded_layer(name, tp, ep, converted, source_layers):
    folder = converted(name, tp=tp, ep=ep)
    layers = source_layers(name)
    spec, canonical = layers[min(layers)]
    x, w, ids = _tokens(12, spec.hidden, spec.num_experts, 2, seed=tp * 10 + ep)
    ref = dense_moe_float64(x, w, ids, canonical, spec.quant, spec.arrangement, spec.activation)
    got = _rank_sum(folder, spec.index, x, w, ids, tp)
    assert _rel(got, ref) < RTOL


def test_ep_rank_without_the_expert_contributes_nothing(converted, example_ckpt):
    folder = converted("qwen3-moe", tp=2, ep=2)
    ck0, ck1 = load(folder, rank=0), load(folder, rank=1)
    assert set(ck0.experts).isdisjoint(ck1.experts)
    layer = min(ck0.moe_layers)
    H = ck0.manifest["model"]["hidden"]
    x = torch.randn(3, H)
    ids = torch.tensor([[ck1.experts[0], ck1.experts[1]]] * 3, dtype=torch.int32)
    w = torch.full((3, 2), 0.5)
    assert torch.count_nonzero(ck0.moe_layers[layer](x, w, ids)) == 0
    assert torch.count_nonzero(ck1.moe_layers[layer](x, w, ids)) > 0


def test_w2_bias_added_once_across_tp_ranks(converted, source_layers):
    """gpt-oss has a down-projection bias; replicated on each TP rank, it must enter the sum once."""
    folder = converted("gpt-oss", tp=4)
    spec, canonical = source_layers("gpt-oss")[0]
    x = torch.zeros(2, spec.hidden)                   # zero input: the output is the biases' path only
    ids = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    w = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    ref = dense_moe_float64(x, w, ids, canonical, spec.quant, spec.arrangement, spec.activation)
    got = _rank_sum(folder, 0, x, w, ids, 4)
    assert _rel(got, ref) < RTOL


EMULATED = [("gpt-oss", "aiter", "mi355x", 2), ("qwen3-moe", "aiter", "mi300x", 2),
            ("nemotron-h", "flashinfer-cutlass", "h100", 2), ("deepseek-v4", "aiter", "mi355x", 1)]


@pytest.mark.parametrize("name,backend,hardware,tp", EMULATED, ids=[f"{e[0]}-{e[1]}-{e[2]}" for e in EMULATED])
def test_vendor_layouts_emulated_on_cpu_sum_to_the_unsharded_layer(name, backend, hardware, tp, converted,
                                                                    source_layers):
    folder = converted(name, backend=backend, hardware=hardware, tp=tp)
    layers = source_layers(name)
    spec, canonical = layers[max(layers)]
    x, w, ids = _tokens(6, spec.hidden, spec.num_experts, 2, seed=7)
    ref = dense_moe_float64(x, w, ids, canonical, spec.quant, spec.arrangement, spec.activation)
    got = _rank_sum(folder, spec.index, x, w, ids, tp, allow_emulation=True)
    assert load(folder, rank=0, allow_emulation=True).execution.emulated
    assert _rel(got, ref) < RTOL


def test_gpt_oss_against_raw_source_tensors(converted, example_ckpt):
    """No formats/layouts code on the reference side: gate/up de-interleaved here from the raw tensors."""
    src = example_ckpt("gpt-oss")
    raw = {}
    for f in glob.glob(str(src / "*.safetensors")):
        with safe_open(f, "pt") as s:
            raw.update({k: s.get_tensor(k) for k in s.keys() if k.startswith("model.layers.1.mlp.experts.")})
    p = "model.layers.1.mlp.experts."
    blocks, scales = raw[p + "gate_up_proj_blocks"], raw[p + "gate_up_proj_scales"]
    E, R = blocks.shape[:2]
    order = torch.cat([torch.arange(0, R, 2), torch.arange(1, R, 2)])        # interleaved -> [gate; up]
    experts = {
        "w13_weight": blocks.reshape(E, R, -1)[:, order], "w13_weight_scale": scales[:, order],
        "w13_bias": raw[p + "gate_up_proj_bias"][:, order],
        "w2_weight": raw[p + "down_proj_blocks"].reshape(E, raw[p + "down_proj_blocks"].shape[1], -1),
        "w2_weight_scale": raw[p + "down_proj_scales"], "w2_bias": raw[p + "down_proj_bias"],
    }
    assert dequant_mxfp4(experts["w13_weight"], experts["w13_weight_scale"]).shape[1] == R
    from moepack.formats.model import Activation
    act = Activation("swiglu_oai", alpha=1.702, limit=7.0)
    H = experts["w2_weight"].shape[1]
    x, w, ids = _tokens(8, H, E, 2, seed=3)
    ref = dense_moe_float64(x, w, ids, experts, "mxfp4", "separate", act)
    got = _rank_sum(converted("gpt-oss", tp=2), 1, x, w, ids, 2)
    assert _rel(got, ref) < RTOL
