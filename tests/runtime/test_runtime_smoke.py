"""`run_smoke` (behind `moepack run`): a row per MoE layer, errors small against its float64 reference,
and a broken rank is visible in the rows."""
from __future__ import annotations

import torch

from moepack.runtime.moe import MoELayer
from moepack.runtime.smoke import run_smoke


def test_all_ranks_rows(converted):
    rows = run_smoke(converted("deepseek-v3", tp=2), tokens=6)
    assert [r["layer"] for r in rows] == [1, 2]                # layer 0 is dense (first_k_dense_replace)
    for r in rows:
        assert r["ranks"] == "all" and r["tokens"] == 6 and r["kernel"] == "reference"
        assert r["ok"] and r["rel_err"] < 1e-5 and r["ms"] >= 0


def test_single_rank_and_emulated_rows(converted):
    rows = run_smoke(converted("gpt-oss", backend="aiter", hardware="mi355x", tp=2), rank=1, tokens=3)
    assert all(r["ranks"] == 1 and r["ok"] and r["kernel"] == "reference (emulated)" for r in rows)


def test_a_layer_that_drops_its_bias_fails(converted, monkeypatch):
    """The check can fail: MoELayer never adding the down-projection bias must show as not ok."""
    monkeypatch.setattr(MoELayer, "add_w2_bias", property(lambda self: False))
    rows = run_smoke(converted("gpt-oss", tp=2), tokens=4)
    assert rows and not any(r["ok"] for r in rows)


def test_static_fp8_input_scales_change_the_reference_when_they_saturate(converted, example_ckpt):
    """fp8_tensor's static input scales of the example saturate N(0, 1) tokens: the reference that applies
    them (what the Triton kernel computes) must differ from the plain float one, and match e4m3 rounding."""
    from moepack.formats.assemble import read_canonical
    from moepack.formats.detect import describe
    from moepack.numerics import quantize_fp8_e4m3
    from moepack.kernels.dense_reference import dense_moe_float64
    from moepack.source.checkpoint import Checkpoint

    ckpt = Checkpoint.open(example_ckpt("nemotron-h"))
    spec = describe(ckpt).moe_layers[0]
    t = {role: read_canonical(ckpt, ct) for role, ct in spec.tensors.items()}
    x = torch.randn(4, spec.hidden, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[0, 1]] * 4, dtype=torch.int32)
    w = torch.full((4, 2), 0.5)
    plain = dense_moe_float64(x, w, ids, t, spec.quant, spec.arrangement, spec.activation)
    static = dense_moe_float64(x, w, ids, t, spec.quant, spec.arrangement, spec.activation, static_input_scales=True)
    assert float((plain - static).norm() / plain.norm()) > 0.1
    s = float(t["w13_input_scale"][0].max())                    # a tiny input: rounding only, no saturation
    x_small = x * (100 * s / x.abs().max())
    one = torch.tensor([[0]], dtype=torch.int32)
    got = dense_moe_float64(x_small[:1], torch.ones(1, 1), one, t, spec.quant, spec.arrangement, spec.activation,
                            static_input_scales=True)
    xq = quantize_fp8_e4m3(x_small[:1].double() / s).double() * s
    up = xq @ (t["w13_weight"][0].double() * t["w13_weight_scale"][0, -1].double()).T
    h = torch.relu(up) ** 2
    s2 = float(t["w2_input_scale"][0])
    hq = quantize_fp8_e4m3(h / s2).double() * s2
    want = hq @ (t["w2_weight"][0].double() * t["w2_weight_scale"][0].double()).T
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
