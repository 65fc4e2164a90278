"""convert(): OUT handling, determinism, parts and workers, dry run, faults (disk full, lock, symlinks),
and SIGKILL at several points followed by --resume giving the same hashes as a clean run."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import xxhash

from moepack.convert import writer as W
from moepack.convert.manifest import Manifest
from moepack.convert.reconstruct import reconstruct_experts
from moepack.convert.run import JOURNAL_PREFIX, convert
from moepack.errors import BadInputError, EnvironmentError_
from moepack.source.checkpoint import Checkpoint

REPO = Path(__file__).resolve().parents[2]
CASE = dict(backend="aiter", hardware="mi355x", tp=2)


def _exact(out: Path, src: Path) -> None:
    ckpt = Checkpoint.open(src)
    n = 0
    for name, t in reconstruct_experts(out):
        assert torch.equal(t.contiguous().view(torch.uint8), ckpt.get(name).contiguous().view(torch.uint8)), name
        n += 1
    assert n > 0


def _file_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
            if p.name != "manifest.json"}


@pytest.fixture(scope="module")
def clean(example_ckpt, tmp_path_factory):
    """gpt-oss tiny, aiter mi355x tp 2, small parts: a clean run to compare others against."""
    src = example_ckpt("gpt-oss")
    out = tmp_path_factory.mktemp("clean") / "out"
    m = convert(src, out, max_shard_size="300KB", progress=False, **CASE)
    return src, out, m


def test_clean_run_layout_and_summary(clean):
    src, out, m = clean
    names = sorted(p.name for p in out.iterdir())
    assert "manifest.json" in names and not [n for n in names if n.startswith(".")]
    assert set(names) - {"manifest.json"} == set(m["files"])
    assert len(m["parallel"]["ranks"][0]["files"]) > 1                     # 300KB forces several parts
    for name, rec in m["files"].items():
        data = (out / name).read_bytes()
        assert rec["size"] == len(data)
        if name.endswith(".safetensors"):   # digest: sha256(header block + each tensor's raw xxh3_128, by offset)
            n = int.from_bytes(data[:8], "little")
            spans = sorted(v["data_offsets"] for k, v in json.loads(data[8:8 + n]).items() if k != "__metadata__")
            assert spans[-1][1] + 8 + n == len(data)
            want = hashlib.sha256(data[:8 + n] + b"".join(xxhash.xxh3_128(data[8 + n + b:8 + n + e]).digest()
                                                          for b, e in spans)).hexdigest()
            assert "sha256" not in rec and rec["digest"] == want
        else:
            assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    srcfiles = {f["name"]: f for f in m["source"]["files"]}
    for p in Path(src).iterdir():
        assert srcfiles[p.name]["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert (out / "config.json").read_bytes() == (Path(src) / "config.json").read_bytes()
    s = m["summary"]
    assert s["bytes"] == sum(r["size"] for r in m["files"].values()) and 0 <= s["padding_fraction"] < 1
    Manifest.load(out)
    _exact(out, src)


def test_deterministic_and_workers(clean, tmp_path):
    src, out, _ = clean
    again = tmp_path / "again"
    convert(src, again, max_shard_size="300KB", progress=False, **CASE)
    assert _file_hashes(again) == _file_hashes(out)
    par = tmp_path / "par"
    m = convert(src, par, max_shard_size="300KB", workers=2, progress=False, **CASE)
    layers = {e["layer"]: e["ranks"][0]["file"] for e in m["experts"]}
    assert layers[0] != layers[1]            # each worker writes its own parts
    _exact(par, src)


def test_dry_run_writes_nothing(clean, tmp_path):
    src = clean[0]
    res = convert(src, tmp_path / "none", dry_run=True, progress=False, **CASE)
    assert not (tmp_path / "none").exists()
    assert res["dry_run"] and res["plan"]["world_size"] == 2 and res["parts"]["rank_parts"]


def test_non_empty_out_refused_overwrite_and_resume(clean, tmp_path):
    src = clean[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "model-rank-0-part-0.safetensors").write_bytes(b"junk")
    with pytest.raises(BadInputError, match="not empty.*--resume.*--overwrite"):
        convert(src, out, progress=False, **CASE)
    with pytest.raises(BadInputError, match="exclude"):
        convert(src, out, resume=True, overwrite=True, progress=False, **CASE)
    convert(src, out, overwrite=True, progress=False, **CASE)
    _exact(out, src)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="notes.txt"):
        convert(src, out, overwrite=True, progress=False, **CASE)
    assert (out / "notes.txt").read_text() == "mine"


def test_out_symlink_and_links_inside_refused(clean, tmp_path):
    src = clean[0]
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(BadInputError, match="symlink"):
        convert(src, tmp_path / "link", progress=False, **CASE)
    (real / "x").symlink_to("/etc/hostname")
    with pytest.raises(BadInputError, match="symlink"):
        convert(src, real, resume=True, progress=False, **CASE)
    assert sorted(p.name for p in real.iterdir()) == ["x"]


def test_disk_full_leaves_no_manifest_and_no_temp(clean, tmp_path, monkeypatch):
    src = clean[0]
    out = tmp_path / "out"
    real = os.pwrite
    seen = {"n": 0}

    def pwrite(fd, buf, offset):
        seen["n"] += 1
        if seen["n"] > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buf, offset)

    monkeypatch.setattr(W.os, "pwrite", pwrite)
    with pytest.raises(EnvironmentError_, match=r"disk full while writing .*\.safetensors"):
        convert(src, out, progress=False, **CASE)
    monkeypatch.undo()
    names = [p.name for p in out.iterdir()]
    assert "manifest.json" not in names and not [n for n in names if n.endswith(".tmp")]
    assert W.LOCK_NAME not in names
    convert(src, out, resume=True, progress=False, **CASE)
    _exact(out, src)


def test_locked_out_refused(clean, tmp_path):
    src = clean[0]
    out = tmp_path / "out"
    out.mkdir()
    with W.OutputLock(out):
        with pytest.raises(EnvironmentError_, match=f"another convert is writing to .*pid {os.getpid()}"):
            convert(src, out, resume=True, progress=False, **CASE)
    assert not (out / "manifest.json").exists()


def _convert_in_child(src: Path, out: Path, kill_at: str | None, resume: bool = False) -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if kill_at:
        env["MOEPACK_KILL_AT"] = kill_at
    code = ("import sys; from moepack.convert.run import convert; "
            "convert(sys.argv[1], sys.argv[2], 'aiter', 'mi355x', tp=2, max_shard_size='300KB', "
            f"resume={resume}, progress=False)")
    return subprocess.run([sys.executable, "-c", code, str(src), str(out)], env=env, cwd=REPO).returncode


@pytest.mark.parametrize("kill_at", ["tensor:2", "part:2", "manifest"])
def test_sigkill_then_resume_matches_clean_run(clean, tmp_path, kill_at):
    src, clean_out, clean_m = clean
    out = tmp_path / "out"
    rc = _convert_in_child(src, out, kill_at)
    assert rc == -9
    assert not (out / "manifest.json").exists()
    journal = [p.name for p in out.iterdir() if p.name.startswith(JOURNAL_PREFIX)]
    if kill_at != "tensor:2":
        assert journal            # some units finished before the kill and are recorded
    damaged = kill_at == "manifest"
    if damaged:                   # a finished part changed on disk after its journal entry: redone, not kept
        victim = out / "model-rank-1-part-0.safetensors"
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
    m = convert(src, out, resume=True, progress=False, **CASE, max_shard_size="300KB")
    assert m["files"] == clean_m["files"]
    assert _file_hashes(out) == _file_hashes(clean_out)
    assert [e["ranks"] for e in m["experts"]] == [e["ranks"] for e in clean_m["experts"]]
    if damaged:
        assert m["summary"]["resumed_units"] == len(journal) - 1 > 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
