"""Example checkpoints: format-exact files, valid values, sizes, determinism, atomic writes."""
from __future__ import annotations

import json
from math import prod

import numpy as np
import pytest
import torch

import moepack.example as example
from ckpt_edit import index_of
from moepack.errors import BadInputError, SourceError
from moepack.example import EXAMPLES, SIZES, TensorSpec, example_dims, example_specs, write_example
from moepack.source.checkpoint import Checkpoint


@pytest.mark.parametrize("name", EXAMPLES)
def test_tiny_example_files(example_ckpt, name):
    root = example_ckpt(name)
    idx = index_of(root)
    files = set(idx["weight_map"].values())
    assert len(files) >= 2
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= {p.name for p in root.iterdir()}
    assert not list(root.glob(".*.tmp"))
    ck = Checkpoint.open(root)
    assert idx["metadata"]["total_size"] == sum(ck.info(n).nbytes for n in ck.tensor_names())
    assert sum(p.stat().st_size for p in ck.files) < 4 << 20        # test inputs stay small
    json.loads((root / "tokenizer.json").read_text())["model"]["vocab"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_values_are_valid(example_ckpt, name):
    ck = Checkpoint.open(example_ckpt(name))
    for n in ck.tensor_names():
        info, t = ck.info(n), ck.get(n)
        if n.endswith(("_scales", ".scale")) and info.dtype in ("U8", "F8_E8M0"):
            codes = t.view(torch.uint8)
            assert int(codes.min()) >= 118 and int(codes.max()) <= 126, n
        elif info.dtype == "F8_E4M3":
            assert torch.isfinite(t.float()).all(), n
            assert t.float().abs().max() > 0, n
        elif info.dtype in ("F32", "BF16") and ("scale" in n):
            assert (t.float() > 0).all(), n
        elif info.dtype in ("F32", "BF16"):
            assert torch.isfinite(t.float()).all(), n
    if name == "gpt-oss":     # FP4 codes come from normals: every code appears, values cluster near 0
        blocks = ck.get("model.layers.0.mlp.experts.gate_up_proj_blocks")
        codes = torch.cat([blocks & 0xF, blocks >> 4]).flatten()
        assert torch.bincount(codes.long(), minlength=16).min() > 0


def test_sizes_contract():
    assert example_dims("qwen3-moe").inter == 384 and example_dims("qwen3-moe", "small").inter == 1536
    nem = example_dims("nemotron-h").inter
    assert (nem // 8) % 16 != 0
    small = example_dims("gpt-oss", "small").inter
    assert small % 32 == 0 and (small // 32) % 4 != 0
    for n in EXAMPLES:
        tiny = example_dims(n)
        g = 32 if n in ("gpt-oss", "deepseek-v4") else 1
        assert (tiny.inter // g) >= 8 and tiny.experts % 8 == 0, n      # tp 8 and ep 8 are possible


@pytest.mark.parametrize("name,size,E,k,H,I", [
    ("gpt-oss", "gpt-oss-20b", 32, 4, 2880, 2880), ("gpt-oss", "gpt-oss-120b", 128, 4, 2880, 2880),
    ("deepseek-v3", "deepseek-v3", 256, 8, 7168, 2048), ("qwen3-moe", "qwen3-235b", 128, 8, 4096, 1536),
    ("nemotron-h", "nemotron-h", 128, 6, 2688, 7688), ("deepseek-v4", "deepseek-v4", 384, 6, 7168, 3072),
])
def test_real_model_sizes(name, size, E, k, H, I):
    d = example_dims(name, size)
    assert (d.experts, d.top_k, d.hidden, d.inter) == (E, k, H, I)
    config, files = example_specs(name, size)
    assert config["hidden_size"] == H
    if size == "gpt-oss-20b":
        total = sum(s.nbytes for f in files for s in f)
        assert 12e9 < total < 14.5e9 and config["num_hidden_layers"] == 24


def test_big_tensors_stream_in_bounded_slabs():
    spec = TensorSpec("model.layers.0.mlp.experts.gate_up_proj_blocks", "U8", (128, 5760, 90, 16), "weight")
    chunks = example._stream(spec, 0)
    first = next(chunks)
    assert first.nbytes <= example._SLAB_ELEMS and first.nbytes < spec.nbytes // 8


@pytest.mark.parametrize("dtype,view", [("F8_E4M3", torch.float8_e4m3fn), ("BF16", torch.bfloat16)])
def test_fast_random_path_is_finite(dtype, view):
    spec = TensorSpec("w", dtype, (4096,), "weight")
    t = example._values(spec, spec.shape, torch.Generator().manual_seed(1), np.random.default_rng(1), exact=False)
    v = t.reshape(-1).view(torch.uint8).view(view).float()
    assert v.numel() == prod(spec.shape) and torch.isfinite(v).all() and v.abs().max() > 0


def test_seed_determinism(tmp_path):
    a = write_example("deepseek-v4", tmp_path / "a", seed=3)
    b = write_example("deepseek-v4", tmp_path / "b", seed=3)
    c = write_example("deepseek-v4", tmp_path / "c", seed=4)
    for f in sorted(a.glob("*.safetensors")):
        assert f.read_bytes() == (b / f.name).read_bytes()
        assert f.read_bytes() != (c / f.name).read_bytes()


def test_unknown_name_or_size():
    with pytest.raises(BadInputError, match="gpt-oss"):
        write_example("mixtral", "/nonexistent")
    with pytest.raises(BadInputError, match="tiny"):
        example_dims("gpt-oss", "huge")
    assert set(SIZES) == set(EXAMPLES)


def test_killed_run_leaves_no_valid_checkpoint(tmp_path, monkeypatch):
    real = example._write_safetensors
    calls = []

    def dying(path, specs, seed):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(path)
        real(path, specs, seed)

    monkeypatch.setattr(example, "_write_safetensors", dying)
    with pytest.raises(KeyboardInterrupt):
        write_example("gpt-oss", tmp_path / "x")
    with pytest.raises(SourceError, match="config.json"):
        Checkpoint.open(tmp_path / "x")
