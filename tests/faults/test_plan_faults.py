"""An impossible plan (tp/ep split, target, alignment) is refused before anything is written: exit 2 from
`inspect --backend/--hardware`, `convert --dry-run` and `convert`, one line naming the flag or tensor."""
from __future__ import annotations

import pytest

import moepack.example as example
from moepack.example import Dims, write_example

from .expect import BAD_INPUT, assert_nothing_accepted, assert_refused


def refused_by_plan(cli, src, out, flags: list[str], *names: str) -> None:
    assert_refused(cli("inspect", src, *flags), BAD_INPUT, *names)
    assert_refused(cli("convert", src, out, *flags, "--dry-run", "--no-progress"), BAD_INPUT, *names)
    assert not out.exists() or not any(out.iterdir()), "--dry-run wrote into OUT"
    assert_refused(cli("convert", src, out, *flags, "--no-progress"), BAD_INPUT, *names)
    assert_nothing_accepted(out)
    assert not out.exists() or not any(p.name.endswith(".safetensors") for p in out.iterdir()), \
        "an impossible plan wrote part files"


def test_tp_larger_than_the_mxfp4_granules_is_refused_naming_tp(cli, example_ckpt, tmp_path):
    # gpt-oss tiny: I = 256 = 8 granules of 32 (one e8m0 scale each): 16 TP ranks cannot split it
    refused_by_plan(cli, example_ckpt("gpt-oss"), tmp_path / "out",
                    ["--backend", "triton", "--hardware", "h100", "--tp", "16"], "--tp 16")


def test_ep_not_dividing_the_experts_is_refused_naming_ep(cli, example_ckpt, tmp_path):
    refused_by_plan(cli, example_ckpt("gpt-oss"), tmp_path / "out",
                    ["--backend", "triton", "--hardware", "h100", "--tp", "3", "--ep", "3"], "--ep 3", "8 experts")


def test_ep_not_dividing_tp_is_refused_naming_both_flags(cli, example_ckpt, tmp_path):
    refused_by_plan(cli, example_ckpt("gpt-oss"), tmp_path / "out",
                    ["--backend", "triton", "--hardware", "h100", "--tp", "4", "--ep", "3"], "--ep 3", "--tp 4")


@pytest.mark.parametrize("name, backend, hardware, quant", [
    ("gpt-oss", "flashinfer-cutlass", "h100", "mxfp4"),     # flashinfer: FP8 per-tensor only
    ("gpt-oss", "aiter", "mi300x", "mxfp4"),                # gfx942 has no MXFP4 matrix cores
    ("deepseek-v3", "flashinfer-cutlass", "b200", "fp8_block"),
    ("gpt-oss", "triton", "tpu-v5", "mxfp4"),               # unknown hardware
    ("gpt-oss", "vllm-magic", "h100", "mxfp4"),             # unknown backend
])
def test_unsupported_backend_hardware_quant_is_refused_naming_the_target(cli, example_ckpt, tmp_path,
                                                                          name, backend, hardware, quant):
    refused_by_plan(cli, example_ckpt(name), tmp_path / "out", ["--backend", backend, "--hardware", hardware],
                    backend, hardware, quant)


def test_impossible_alignment_is_refused_naming_the_tensor(cli, tmp_path, monkeypatch):
    # hidden 120 is not a multiple of AITER's 16-row shuffle tile, and AITER does not pad w2's rows
    monkeypatch.setitem(example._DIMS["nemotron-h"], "odd-hidden", Dims(4, 8, 2, 120, 248, shared_inter=256))
    src = write_example("nemotron-h", tmp_path / "odd-hidden", size="odd-hidden")
    refused_by_plan(cli, src, tmp_path / "out", ["--backend", "aiter", "--hardware", "mi300x", "--tp", "2"],
                    "w2_weight", "aiter")


def test_resume_with_overwrite_is_refused_naming_both_flags(cli, example_ckpt, tmp_path):
    res = cli("convert", example_ckpt("gpt-oss"), tmp_path / "out", "--backend", "triton", "--hardware", "h100",
              "--resume", "--overwrite")
    assert_refused(res, BAD_INPUT, "--resume", "--overwrite")
    assert not (tmp_path / "out").exists()


def test_backend_without_hardware_is_refused_naming_the_flags(cli, example_ckpt):
    assert_refused(cli("inspect", example_ckpt("gpt-oss"), "--backend", "triton", "--tp", "2"), BAD_INPUT,
                   "--backend", "--hardware")


@pytest.mark.parametrize("args, flag", [
    (["convert", "SRC", "OUT", "--backend", "triton", "--hardware", "h100", "--tp", "abc"], "--tp"),
    (["verify", "OUT", "--level", "bogus"], "--level"),
    (["inspect", "SRC", "--no-such-flag"], "--no-such-flag"),
])
def test_unparsable_flag_is_refused_in_one_line_naming_it(cli, example_ckpt, tmp_path, args, flag):
    args = [str(example_ckpt("gpt-oss")) if a == "SRC" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    assert_refused(cli(*args), BAD_INPUT, flag)
