"""A broken source checkpoint is refused by `inspect` and `convert` alike: exit 2, one line naming the
file / tensor / config key, and `convert` leaves no manifest behind."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from ckpt_edit import edit_config, index_of, rewrite_tensors, write_raw_safetensors

from .expect import BAD_INPUT, assert_nothing_accepted, assert_refused

GPT_SHARD = "model-00001-of-00003.safetensors"      # gpt-oss tiny: layer 0's experts live here
GPT_X = "model.layers.0.mlp.experts"


def refused_everywhere(cli, src: Path, out: Path, *names: str, exit_code: int = BAD_INPUT) -> None:
    """`inspect SRC` and `convert SRC OUT` both refuse, naming `names`; OUT holds no acceptable manifest."""
    assert_refused(cli("inspect", src), exit_code, *names)
    assert_refused(cli("convert", src, out, "--backend", "triton", "--hardware", "h100", "--no-progress"),
                   exit_code, *names)
    assert_nothing_accepted(out)


def convert_refuses(cli, src: Path, out: Path, *names: str) -> None:
    """Faults only the tensor data shows (headers are fine): `convert` must refuse."""
    assert_refused(cli("convert", src, out, "--backend", "triton", "--hardware", "h100", "--no-progress"),
                   BAD_INPUT, *names)
    assert_nothing_accepted(out)


def read_st(path: Path) -> tuple[dict, bytes]:
    """(header dict, data section) of a safetensors file, parsed independently of moepack."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def tensors_by_offset(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


# ------------------------------------------------------------------------------------------ file damage

def test_truncated_safetensors_is_refused_naming_the_file(cli, src_copy, tmp_path):
    src = src_copy()
    path = src / GPT_SHARD
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused_everywhere(cli, src, tmp_path / "out", GPT_SHARD, "truncated")


def test_header_length_larger_than_the_file_is_refused(cli, src_copy, tmp_path):
    src = src_copy()
    path = src / GPT_SHARD
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 4)
    path.write_bytes(bytes(data))
    refused_everywhere(cli, src, tmp_path / "out", GPT_SHARD, "header length")


def test_garbage_header_json_is_refused_naming_the_file(cli, src_copy, tmp_path):
    src = src_copy()
    path = src / GPT_SHARD
    header, data = read_st(path)
    n = len(json.dumps(header))
    write_raw_safetensors(path, b"{garbage" + b"\xff" * (n - 8), data)
    refused_everywhere(cli, src, tmp_path / "out", GPT_SHARD, "JSON")


def test_tensor_offsets_past_the_data_are_refused_naming_the_tensor(cli, src_copy, tmp_path):
    src = src_copy()
    path = src / GPT_SHARD
    header, data = read_st(path)
    last = tensors_by_offset(header)[-1]
    lo, hi = header[last]["data_offsets"]
    header[last]["data_offsets"] = [lo + len(data), hi + len(data)]     # same length, outside the file
    write_raw_safetensors(path, header, data)
    refused_everywhere(cli, src, tmp_path / "out", GPT_SHARD, last)


def test_overlapping_tensor_offsets_are_refused_naming_both_tensors(cli, src_copy, tmp_path):
    src = src_copy()
    path = src / GPT_SHARD
    header, data = read_st(path)
    first, second = tensors_by_offset(header)[:2]
    lo, hi = header[second]["data_offsets"]
    start = header[first]["data_offsets"][0]
    header[second]["data_offsets"] = [start, start + hi - lo]             # inside `first`'s bytes
    write_raw_safetensors(path, header, data)
    refused_everywhere(cli, src, tmp_path / "out", GPT_SHARD, first, second, "overlaps")


def test_unknown_dtype_is_refused_naming_the_tensor(cli, src_copy, tmp_path):
    src = src_copy()
    path = src / GPT_SHARD
    header, data = read_st(path)
    header[f"{GPT_X}.down_proj_bias"]["dtype"] = "F12"
    write_raw_safetensors(path, header, data)
    refused_everywhere(cli, src, tmp_path / "out", f"{GPT_X}.down_proj_bias", "F12")


def test_index_naming_a_missing_file_is_refused_naming_it(cli, src_copy, tmp_path):
    src = src_copy()
    victim = "model-00002-of-00003.safetensors"
    assert victim in index_of(src)["weight_map"].values()
    (src / victim).unlink()
    refused_everywhere(cli, src, tmp_path / "out", victim)


def test_missing_config_json_is_refused_naming_it(cli, src_copy, tmp_path):
    src = src_copy()
    (src / "config.json").unlink()
    refused_everywhere(cli, src, tmp_path / "out", "config.json")


def test_missing_source_folder_is_refused_naming_it(cli, tmp_path):
    src = tmp_path / "no-such-checkpoint"
    refused_everywhere(cli, src, tmp_path / "out", "no-such-checkpoint")


# ------------------------------------------------------------------------------------------ format damage

def test_unknown_quant_method_is_refused_naming_it(cli, src_copy, tmp_path):
    src = src_copy()
    cfg = json.loads((src / "config.json").read_text())
    edit_config(src, quantization_config={**cfg["quantization_config"], "quant_method": "awq-int3"})
    refused_everywhere(cli, src, tmp_path / "out", "quant_method", "awq-int3")


@pytest.mark.parametrize("key, value", [("intermediate_size", 128), ("num_local_experts", 16)])
def test_config_contradicting_tensor_shapes_is_refused_naming_the_tensor(cli, src_copy, tmp_path, key, value):
    src = src_copy()
    edit_config(src, **{key: value})
    refused_everywhere(cli, src, tmp_path / "out", f"{GPT_X}.gate_up_proj_blocks", str(value))


@pytest.mark.parametrize("name, scale", [
    ("gpt-oss", f"{GPT_X}.down_proj_scales"),
    ("deepseek-v3", "model.layers.1.mlp.experts.3.down_proj.weight_scale_inv"),
])
def test_missing_scale_tensor_is_refused_naming_it(cli, src_copy, tmp_path, name, scale):
    src = src_copy(name)
    rewrite_tensors(src, lambda n, t: None if n == scale else t)
    refused_everywhere(cli, src, tmp_path / "out", scale)


@pytest.mark.parametrize("name, scale", [
    ("gpt-oss", f"{GPT_X}.gate_up_proj_scales"),
    ("deepseek-v3", "model.layers.2.mlp.experts.5.up_proj.weight_scale_inv"),
])
def test_scale_of_wrong_shape_is_refused_naming_it(cli, src_copy, tmp_path, name, scale):
    src = src_copy(name)
    rewrite_tensors(src, lambda n, t: t[..., :-1] if n == scale else t)
    refused_everywhere(cli, src, tmp_path / "out", scale, "shape")


# ------------------------------------------------------------------------------------------ value damage

def _poison(value: float):
    def edit(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        t.view(-1)[min(3, t.numel() - 1)] = value
        return t
    return edit


@pytest.mark.parametrize("name, scale, edit", [
    ("deepseek-v3", "model.layers.1.mlp.experts.3.down_proj.weight_scale_inv", _poison(float("nan"))),
    ("deepseek-v3", "model.layers.2.mlp.experts.0.gate_proj.weight_scale_inv", _poison(float("inf"))),
    ("deepseek-v3", "model.layers.1.mlp.experts.1.up_proj.weight_scale_inv", _poison(float("-inf"))),
    ("nemotron-h", None, _poison(float("nan"))),       # ModelOpt per-tensor FP8 scale
    ("gpt-oss", f"{GPT_X}.down_proj_scales", _poison(255)),  # e8m0 code 255 is NaN
], ids=["fp8-block-nan", "fp8-block-inf", "fp8-block-neg-inf", "fp8-tensor-nan", "e8m0-nan"])
def test_nan_or_inf_scale_is_refused_by_convert_naming_the_tensor(cli, src_copy, tmp_path, name, scale, edit):
    src = src_copy(name)
    if scale is None:            # the first expert weight scale of the ModelOpt checkpoint
        scale = next(n for n in sorted(index_of(src)["weight_map"]) if ".experts." in n and n.endswith("weight_scale"))
    seen = []

    def poison(n, t):
        if n != scale:
            return t
        seen.append(n)
        return edit(t)

    rewrite_tensors(src, poison)
    assert seen == [scale]
    convert_refuses(cli, src, tmp_path / "out", scale)


def test_debug_flag_shows_the_traceback_instead_of_one_line(src_copy, monkeypatch):
    from moepack.cli import main
    from moepack.errors import SourceError

    src = src_copy()
    (src / "config.json").unlink()
    monkeypatch.setattr("sys.argv", ["moepack"])
    with pytest.raises(SourceError, match="config.json"):
        main(["--debug", "inspect", str(src)])
