"""`run_smoke` (behind `moepack run`): a row per MoE layer, errors small against its float64 reference,
and a broken rank is visible in the rows."""
from __future__ import annotations

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
