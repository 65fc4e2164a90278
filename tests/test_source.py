"""Source layer: Hub resolution through a local cache, lazy Checkpoint, strict header checks."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from ckpt_edit import as_bytes, copy_ckpt, index_of, raw_tensor_bytes, write_raw_safetensors
from moepack.errors import SourceError
from moepack.source.checkpoint import Checkpoint
from moepack.source.hub import resolve

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(tmp_path, src, repo="org/name"):
    """A Hub cache layout under tmp_path/hf (HF_HOME) holding `src` as snapshot COMMIT of `repo`."""
    home = tmp_path / "hf"
    repo_dir = home / "hub" / ("models--" + repo.replace("/", "--"))
    shutil.copytree(src, repo_dir / "snapshots" / COMMIT)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return home


@pytest.fixture
def offline_hub(monkeypatch, tmp_path, example_ckpt):
    home = hub_cache(tmp_path, example_ckpt("gpt-oss"))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_resolve_hub_id_from_offline_cache(offline_hub):
    rs = resolve("org/name")
    assert rs.repo_id == "org/name" and rs.commit == COMMIT
    assert (rs.path / "config.json").is_file()
    ck = Checkpoint.open("org/name")
    assert ck.source.commit == COMMIT and len(ck.files) >= 2


def test_resolve_uncached_offline_is_source_error(offline_hub):
    with pytest.raises(SourceError, match="other/missing"):
        resolve("other/missing")
    with pytest.raises(SourceError, match="not in the Hub cache"):
        Checkpoint.open("other/missing", revision="main")


def test_resolve_local_folder_and_missing_folder(example_ckpt, tmp_path):
    rs = resolve(str(example_ckpt("gpt-oss")))
    assert rs.repo_id is None and rs.commit is None and rs.path == example_ckpt("gpt-oss").resolve()
    with pytest.raises(SourceError, match="no such folder"):
        resolve(str(tmp_path / "nope"))


def test_open_reads_headers_only_and_get_is_lazy(example_ckpt):
    root = example_ckpt("deepseek-v3")
    ck = Checkpoint.open(root)
    idx = index_of(root)
    assert set(ck.tensor_names()) == set(idx["weight_map"])
    assert ck.bytes_materialized == 0
    assert {p.name for p in ck.extra_files} >= {"config.json", "generation_config.json", "tokenizer.json"}
    assert ck.config["model_type"] == "deepseek_v3"
    name = "model.layers.1.mlp.experts.3.gate_proj.weight"
    info = ck.info(name)
    assert info.file == idx["weight_map"][name] and info.dtype == "F8_E4M3"
    t = ck.get(name)
    assert t.dtype == torch.float8_e4m3fn and tuple(t.shape) == info.shape
    assert ck.bytes_materialized == info.nbytes == t.numel()
    assert as_bytes(t) == raw_tensor_bytes(root, info.file, name)


def test_single_file_without_index_and_fp4_e8m0_dtypes(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    codes = torch.randint(0, 256, (4, 8), dtype=torch.uint8)
    save_file({"w": codes.clone().view(torch.float4_e2m1fn_x2), "s": codes.clone().view(torch.float8_e8m0fnu),
               "b": torch.ones(3, dtype=torch.bfloat16)}, str(tmp_path / "model.safetensors"))
    ck = Checkpoint.open(tmp_path)
    assert ck.info("w").dtype == "F4" and ck.info("w").shape == (4, 16) and ck.info("w").torch_shape == (4, 8)
    w = ck.get("w")
    assert w.dtype == torch.float4_e2m1fn_x2 and torch.equal(w.view(torch.uint8), codes)
    assert ck.info("s").dtype == "F8_E8M0" and torch.equal(ck.get("s").view(torch.uint8), codes)


def test_all_safetensors_without_index(example_ckpt, tmp_path):
    root = copy_ckpt(example_ckpt("qwen3-moe"), tmp_path / "c")
    names = set(index_of(root)["weight_map"])
    (root / "model.safetensors.index.json").unlink()
    assert set(Checkpoint.open(root).tensor_names()) == names


def test_provenance_hashes_every_file(example_ckpt):
    root = example_ckpt("gpt-oss")
    prov = {p["name"]: p for p in Checkpoint.open(root).provenance()}
    for f in root.iterdir():
        assert prov[f.name]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
        assert prov[f.name]["size"] == f.stat().st_size


# ---------------------------------------------------------------- bad inputs
def _one_file_ckpt(tmp_path, header, data=b"", header_len=None):
    (tmp_path / "config.json").write_text("{}")
    write_raw_safetensors(tmp_path / "model.safetensors", header, data, header_len)
    return tmp_path


def test_missing_config_json(example_ckpt, tmp_path):
    root = copy_ckpt(example_ckpt("gpt-oss"), tmp_path / "c")
    (root / "config.json").unlink()
    with pytest.raises(SourceError, match="config.json"):
        Checkpoint.open(root)


def test_index_names_missing_file(example_ckpt, tmp_path):
    root = copy_ckpt(example_ckpt("gpt-oss"), tmp_path / "c")
    victim = sorted(set(index_of(root)["weight_map"].values()))[0]
    (root / victim).unlink()
    with pytest.raises(SourceError, match=victim):
        Checkpoint.open(root)


def test_index_names_tensor_absent_from_file(example_ckpt, tmp_path):
    root = copy_ckpt(example_ckpt("gpt-oss"), tmp_path / "c")
    idx = index_of(root)
    idx["weight_map"]["model.layers.0.mlp.ghost.weight"] = next(iter(idx["weight_map"].values()))
    (root / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(SourceError, match="model.layers.0.mlp.ghost.weight"):
        Checkpoint.open(root)


def test_truncated_safetensors(example_ckpt, tmp_path):
    root = copy_ckpt(example_ckpt("gpt-oss"), tmp_path / "c")
    victim = sorted(set(index_of(root)["weight_map"].values()))[0]
    data = (root / victim).read_bytes()
    (root / victim).write_bytes(data[: len(data) - 100])
    with pytest.raises(SourceError, match=f"{victim}: truncated"):
        Checkpoint.open(root)


@pytest.mark.parametrize("header,data,header_len,match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, 10 ** 9, "header length"),
    (b"{not json", b"", None, "not valid JSON"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlaps"),
    ({"a": {"dtype": "Q3", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "tensor a: unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "tensor a: data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None, "truncated"),
])
def test_bad_headers(tmp_path, header, data, header_len, match):
    root = _one_file_ckpt(tmp_path, header, data, header_len)
    with pytest.raises(SourceError, match=match) as err:
        Checkpoint.open(root)
    assert "model.safetensors" in str(err.value) and "\n" not in str(err.value)


def test_header_longer_than_the_safetensors_limit_is_refused_without_reading_it(tmp_path):
    """A hostile file may claim a 150 MB header inside a 200 MB (sparse) file: refused by the 100 MiB cap
    of the format, before any of it is read or parsed."""
    import struct as _struct
    from moepack.source.header import MAX_HEADER_BYTES, HeaderError, read_header as parse

    path = tmp_path / "model.safetensors"
    with open(path, "wb") as f:
        f.write(_struct.pack("<Q", 150 * 2**20))
        f.truncate(200 * 2**20)                      # sparse: no 200 MB actually written
    assert 150 * 2**20 > MAX_HEADER_BYTES
    with pytest.raises(HeaderError, match="exceeds"):
        parse(path)
    from moepack.source.checkpoint import read_header
    with pytest.raises(SourceError, match="model.safetensors: header length"):
        read_header(path)
