"""Acceptance: clean conversions pass every level; each seed bug written into a conversion fails verify,
and the failing rows name the tensor, the check (and the rank where one rank is at fault).

Mutations 2-7 rewrite the manifest's hashes and sizes to match the mutated bytes, so the hash checks
pass and only reconstruction / padding / plan / numeric can find them (asserted in each test).
"""
from __future__ import annotations

import shutil

import pytest
import torch

from moepack.errors import ManifestError
from moepack.verify import verify

from . import mutate as M

GPT = ("gpt-oss", "aiter", "mi355x", 2, 1, None)          # a16w4 INTERLEAVE, I=256 -> 128/rank padded to 256
DSV4 = ("deepseek-v4", "aiter", "mi355x", 2, 1, "separated")
CLEAN = [GPT, DSV4, ("qwen3-moe", "triton", "h100", 2, 1, None), ("deepseek-v3", "aiter", "mi300x", 2, 2, None),
         ("nemotron-h", "flashinfer-cutlass", "h100", 4, 1, None)]
W13 = "model.layers.0.mlp.experts.w13_weight"


def _convert(src, out, backend, hardware, tp, ep, variant):
    try:
        from moepack.convert.run import convert
    except ImportError:
        from .stand_in import stand_in_convert
        return stand_in_convert(src, out, backend, hardware, tp, ep, variant)
    import inspect

    accepted = inspect.signature(convert).parameters
    kwargs = {k: v for k, v in {"variant": variant, "progress": False}.items() if k in accepted and v is not None}
    return convert(src, out, backend=backend, hardware=hardware, tp=tp, ep=ep, **kwargs)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, example_ckpt):
    """case -> (src, a pristine conversion); convert once per module, copy per test."""
    root = tmp_path_factory.mktemp("converted")
    cache = {}

    def make(case):
        if case not in cache:
            name, backend, hardware, tp, ep, variant = case
            src = example_ckpt(name)
            out = root / f"{name}-{backend}-{hardware}-tp{tp}-ep{ep}"
            _convert(src, out, backend, hardware, tp, ep, variant)
            cache[case] = (src, out)
        return cache[case]

    return make


@pytest.fixture
def copy_of(converted, tmp_path):
    def make(case):
        src, out = converted(case)
        dst = tmp_path / out.name
        shutil.copytree(out, dst)
        return src, dst, M.manifest(dst)

    return make


def _verify(out, src, level="numeric"):
    return verify(out, source=src, level=level, progress=False)


def _hashes_hold(report):
    """The mutation kept the manifest's hashes consistent: every hash row passed."""
    bad = [r for r in report.rows if r.check in ("file-hash", "tensor-hash", "size") and r.result != "ok"]
    assert not bad, bad


@pytest.mark.parametrize("case", CLEAN, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-tp{c[3]}-ep{c[4]}")
def test_clean_conversion_passes_every_level(converted, case):
    src, out = converted(case)
    for level in ("quick", "full", "numeric"):
        report = _verify(out, src, level)
        assert report.ok, report.verdict
    checks = {r.check for r in report.rows if r.result == "ok"}
    assert {"manifest", "file", "size", "header", "dtype", "shape", "file-hash", "tensor-hash", "source-file",
            "plan", "reconstruct", "padding", "numeric"} <= checks
    assert report.exit_code == 0 and report.to_json()["ok"] is True


def test_1_flipped_byte_in_a_weight(copy_of):
    src, out, data = copy_of(GPT)
    M.flip_byte(out, data, M.entry(data, 0, "w2_weight"), rank=1)
    report = _verify(out, src)
    name = "model.layers.0.mlp.experts.w2_weight"
    assert [r.rank for r in report.failed(name, "tensor-hash")] == [1]
    assert report.failed(name, "reconstruct") and report.failed("model.layers.0.mlp.experts", "numeric")
    assert report.exit_code == 3


def test_2_two_experts_swapped(copy_of):
    src, out, data = copy_of(GPT)
    M.swap_experts(out, data, M.entry(data, 0, "w13_weight"), rank=0, a=2, b=5)
    report = _verify(out, src)
    _hashes_hold(report)
    assert 0 in [r.rank for r in report.failed(W13, "reconstruct")]
    assert report.failed("model.layers.0.mlp.experts", "numeric")
    assert not report.failed("model.layers.1.")


def test_3_non_zero_value_in_a_padding_row(copy_of):
    src, out, data = copy_of(GPT)
    e = M.entry(data, 0, "w2_weight")
    M.poke_padding(out, data, e, rank=1, value=0x21)
    report = _verify(out, src, "full")
    _hashes_hold(report)
    rows = report.failed(e["name"], "padding")
    assert [r.rank for r in rows] == [1] and "non-pad value" in rows[0].detail
    assert 1 in [r.rank for r in report.failed(e["name"], "reconstruct")]
    assert not _verify(out, None, "full").ok          # found without the source too


def test_3b_scale_padding_must_be_127(copy_of):
    src, out, data = copy_of(GPT)
    e = M.entry(data, 0, "w13_weight_scale")
    M.poke_padding(out, data, e, rank=0, value=0)      # 0 is 2^-127, not the documented 1.0
    report = _verify(out, None, "full")
    assert [r.rank for r in report.failed(e["name"], "padding")] == [0]


def test_4_gate_up_deinterleaved_twice(copy_of):
    src, out, data = copy_of(DSV4)                     # DeepSeek-V4 w1/w3 are already separated
    M.deinterleave_twice(out, data, src)
    report = _verify(out, src)
    _hashes_hold(report)
    for role in ("w13_weight", "w13_weight_scale"):
        assert report.failed(f"model.layers.0.mlp.experts.{role}", "reconstruct"), role
    assert report.failed("model.layers.0.mlp.experts", "numeric")
    assert not report.failed(check="padding")         # the layout itself is well-formed: only the data is wrong


def test_5_tp_slices_at_padded_offsets(copy_of):
    src, out, data = copy_of(GPT)
    M.padded_offset_slices(out, data, src)
    report = _verify(out, src)
    _hashes_hold(report)
    last = max(range(2), key=lambda r: r)
    w2 = M.read_part(out, M.entry(data, 0, "w2_weight"), last)
    assert not bool(w2.any())                           # the bug: the last rank holds only zeros
    assert last in [r.rank for r in report.failed(W13, "reconstruct")]
    assert last in [r.rank for r in report.failed("model.layers.0.mlp.experts.w2_weight", "reconstruct")]
    assert report.failed("model.layers.0.mlp.experts", "numeric")


def test_6_separated_shuffle_where_manifest_says_interleave(copy_of):
    src, out, data = copy_of(GPT)
    assert any(s["name"] == "aiter_shuffle_weight_a16w4" for s in M.entry(data, 0, "w13_weight")["chain"])
    M.separated_shuffles(out, data, src)
    report = _verify(out, src)
    # w13: the gate/up tiles differ, so the bytes do; w2's two shuffles happen to be the same permutation
    assert {r.rank for r in report.failed(W13, "reconstruct")} >= {0, 1}
    for role in ("w13_weight_scale", "w2_weight_scale"):   # e8m0_shuffle pads to 256 rows: another shape
        assert report.failed(f"model.layers.0.mlp.experts.{role}", "shape"), role
    assert report.failed("model.layers.0.mlp.experts", "numeric") or report.failed(W13, "reconstruct")
    assert not report.failed(check="tensor-hash")


def test_7_scale_tensor_from_the_wrong_rank(copy_of):
    src, out, data = copy_of(GPT)
    e = M.entry(data, 1, "w2_weight_scale")
    assert not torch.equal(M.read_part(out, e, 0), M.read_part(out, e, 1))
    M.scale_from_rank(out, data, e, to_rank=1, from_rank=0)
    report = _verify(out, src)
    _hashes_hold(report)
    assert [r.rank for r in report.failed(e["name"], "reconstruct") if r.rank is not None] == [1]
    assert report.failed("model.layers.1.mlp.experts", "numeric")


def test_8_truncated_file(copy_of):
    src, out, data = copy_of(GPT)
    file = M.entry(data, 1, "w2_weight")["ranks"][0]["file"]
    M.truncate(out, file)
    report = _verify(out, src, "quick")
    assert report.failed(file, "size") and "truncated" in report.failed(file, "size")[0].detail
    lost = [r for r in report.failed(check="header") if r.rank == 0]
    assert lost and all(r.subject.startswith("model.layers.") for r in lost)
    full = _verify(out, src, "numeric")                  # later checks skip the file instead of crashing
    assert full.failed(file, "file-hash") and not full.ok


def test_9_dtype_differs_from_the_manifest(copy_of):
    src, out, data = copy_of(GPT)
    e = M.entry(data, 0, "w13_weight_scale")
    M.change_dtype(out, data, e, rank=1, dtype=torch.float8_e8m0fnu)   # same bytes, another header dtype
    report = _verify(out, src, "quick")
    rows = report.failed(e["name"], "dtype")
    assert [r.rank for r in rows] == [1] and "F8_E8M0" in rows[0].detail
    b = M.entry(data, 0, "w13_bias")
    M.change_dtype(out, data, b, rank=0, dtype=torch.bfloat16)
    assert [r.rank for r in _verify(out, src, "quick").failed(b["name"], "dtype")] == [0]


def test_bad_input_raises_instead_of_failing_a_check(copy_of, tmp_path):
    src, out, data = copy_of(GPT)
    with pytest.raises(ManifestError):
        verify(tmp_path / "nowhere", level="quick", progress=False)
    data["files"]["../escape.safetensors"] = {"rank": None, "size": 1, "sha256": "0" * 64}
    M.save_manifest(out, data)
    with pytest.raises(ManifestError, match="escape"):
        verify(out, level="quick", progress=False)


def test_without_source_checks_what_it_can_and_says_what_it_skipped(converted, capsys):
    src, out = converted(GPT)
    report = verify(out, level="numeric", progress=True)
    assert report.ok
    assert not [r for r in report.rows if r.check in ("reconstruct", "plan", "source-file")]
    assert {r.result for r in report.rows if r.check == "numeric"} == {"skip"}
    assert [r for r in report.rows if r.check == "padding" and r.result == "ok"]


def test_every_quant_scheme_has_a_tolerance():
    from moepack.layouts.targets import QUANTS
    from moepack.verify import TOLERANCES

    assert set(TOLERANCES) == set(QUANTS) and all(0 < t < 1e-3 for t in TOLERANCES.values())
