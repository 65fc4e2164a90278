"""PartWriter / OutputLock / sizes: files readable by safetensors, hashes from an independent hashlib pass,
atomicity under failures, error mapping, lock contention, symlink refusal."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import subprocess
import sys

import pytest
import torch
import xxhash
from safetensors import safe_open

from moepack.convert import writer as W
from moepack.errors import BadInputError, EnvironmentError_


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.w": torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=g),
        "a.b": torch.randn(3, 5, generator=g),
        "a.fp8": torch.randn(4, 8, generator=g).to(torch.float8_e4m3fn),
        "a.bf": torch.randn(9, generator=g).to(torch.bfloat16),
        "a.empty": torch.zeros(0, 4, dtype=torch.float32),
    }


def _write(out, name, tensors):
    entries = [W.TensorEntry.of(k, v) for k, v in tensors.items()]
    with W.PartWriter(out, name, entries) as w:
        for k, v in tensors.items():
            w.write(k, v)
    return w.result


def test_part_file_reads_back_with_independent_hashes(tmp_path):
    ts = _tensors()
    res = _write(tmp_path, "p.safetensors", ts)
    path = tmp_path / "p.safetensors"
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    spans = sorted(v["data_offsets"] for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__")
    want = hashlib.sha256(raw[:8 + n] + b"".join(xxhash.xxh3_128(raw[8 + n + b:8 + n + e]).digest()
                                                 for b, e in spans)).hexdigest()
    assert res.size == len(raw) and res.digest == want and W.file_digest(path) == (len(raw), want)
    assert (8 + n) % 8 == 0 and json.loads(raw[8:8 + n]).get("__metadata__") is None
    with safe_open(path, "pt") as f:
        assert list(f.keys()) == sorted(ts)
        for k, v in ts.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and got.shape == v.shape
            assert torch.equal(got.view(torch.uint8), v.view(torch.uint8))
            assert res.tensors[k]["xxh3_128"] == xxhash.xxh3_128(v.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    assert not list(tmp_path.glob(".*.tmp"))


def test_deterministic_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _write(a, "p.safetensors", _tensors()), _write(b, "p.safetensors", _tensors())
    assert (a / "p.safetensors").read_bytes() == (b / "p.safetensors").read_bytes()


def test_write_raw_and_noncontiguous(tmp_path):
    t = torch.arange(24, dtype=torch.int32).reshape(4, 6).t()       # non-contiguous
    raw = torch.arange(10, dtype=torch.uint8)
    entries = [W.TensorEntry.of("t", t), W.TensorEntry("r", "U8", (10,), 10)]
    with W.PartWriter(tmp_path, "x.safetensors", entries) as w:
        w.write("t", t)
        w.write_raw("r", [raw.numpy().tobytes()[:3], raw.numpy().tobytes()[3:]])
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor("t"), t)
        assert torch.equal(f.get_tensor("r"), raw)


def test_exception_mid_write_leaves_no_file(tmp_path):
    ts = _tensors()
    entries = [W.TensorEntry.of(k, v) for k, v in ts.items()]
    with pytest.raises(RuntimeError, match="boom"):
        with W.PartWriter(tmp_path, "p.safetensors", entries) as w:
            w.write("a.w", ts["a.w"])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_wrong_order_or_missing_tensor_leaves_no_file(tmp_path):
    ts = _tensors()
    entries = [W.TensorEntry.of(k, v) for k, v in ts.items()]
    with pytest.raises(RuntimeError, match="expected a.w"):
        with W.PartWriter(tmp_path, "p.safetensors", entries) as w:
            w.write("a.b", ts["a.b"])
    with pytest.raises(RuntimeError, match="not written"):
        with W.PartWriter(tmp_path, "p.safetensors", entries) as w:
            w.write("a.w", ts["a.w"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "disk full"), (errno.EDQUOT, "quota"),
                                        (errno.EROFS, "read-only")])
def test_write_errors_map_to_environment_error(tmp_path, monkeypatch, code, words):
    ts = _tensors()
    entries = [W.TensorEntry.of(k, v) for k, v in ts.items()]
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def failing_pwrite(fd, buf, offset):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(code, os.strerror(code))
        return real_pwrite(fd, buf, offset)

    monkeypatch.setattr(W.os, "pwrite", failing_pwrite)
    with pytest.raises(EnvironmentError_, match=f"{words}.*p.safetensors") as ei:
        with W.PartWriter(tmp_path, "p.safetensors", entries) as w:
            for k, v in ts.items():
                w.write(k, v)
    assert ei.value.exit_code == 4 and "\n" not in str(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_permission_denied_on_create(tmp_path, monkeypatch):
    def deny(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(W.os, "open", deny)
    with pytest.raises(EnvironmentError_, match="permission denied.*q.safetensors"):
        W.PartWriter(tmp_path, "q.safetensors", [])
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_existing_final_file_survives_a_failed_rewrite(tmp_path):
    _write(tmp_path, "p.safetensors", {"x": torch.ones(2)})
    before = (tmp_path / "p.safetensors").read_bytes()
    with pytest.raises(RuntimeError):
        with W.PartWriter(tmp_path, "p.safetensors", [W.TensorEntry.of("x", torch.ones(2))]):
            raise RuntimeError("stop")
    assert (tmp_path / "p.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]


@pytest.mark.parametrize("bad", ["../x.safetensors", "/tmp/x", "a/b", "..", ""])
def test_names_outside_out_refused(tmp_path, bad):
    with pytest.raises(BadInputError):
        W.PartWriter(tmp_path, bad, [])


def test_symlinked_out_and_links_inside_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(BadInputError, match="symlink"):
        W.check_out_dir(link)
    W.check_out_dir(real)
    (real / "evil").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BadInputError, match="evil"):
        W.check_out_dir(real)


def test_temp_name_symlink_is_not_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".p.safetensors.tmp").symlink_to(target)
    _write(out, "p.safetensors", {"x": torch.ones(2)})
    assert target.read_bytes() == b"keep"


def test_split_parts_and_sizes():
    es = [W.TensorEntry(str(i), "U8", (n,), n) for i, n in enumerate([4, 4, 10, 1, 1, 3])]
    parts = W.split_parts(es, 8)
    assert [[e.name for e in p] for p in parts] == [["0", "1"], ["2"], ["3", "4", "5"]]
    assert all(sum(e.nbytes for e in p) <= 8 or len(p) == 1 for p in parts)
    assert W.split_parts([], 8) == []
    assert W.parse_size("5GB") == 5 * 10**9
    assert W.parse_size("500MB") == 500 * 10**6
    assert W.parse_size("1.5KiB") == 1536
    assert W.parse_size(1234) == 1234 and W.parse_size("77") == 77
    for bad in ("five", "0", "-3GB", "5XB"):
        with pytest.raises(BadInputError, match="max-shard-size"):
            W.parse_size(bad)


def test_lock_contention_and_release(tmp_path):
    with W.OutputLock(tmp_path) as lock:
        assert (tmp_path / W.LOCK_NAME).read_text().split()[0] == str(os.getpid())
        with pytest.raises(EnvironmentError_, match=f"another convert is writing to .*pid {os.getpid()}"):
            W.OutputLock(tmp_path).acquire()
        assert lock.held
    assert not (tmp_path / W.LOCK_NAME).exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_lock_held_by_live_process_refused_stale_taken_over(tmp_path):
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys,time; from moepack.convert.writer import OutputLock;"
                              "l=OutputLock(sys.argv[1]).acquire(); print('ok',flush=True); time.sleep(60)",
                              str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert child.stdout.readline().strip() == "ok"
        with pytest.raises(EnvironmentError_, match=f"pid {child.pid}"):
            W.OutputLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    # the holder died without releasing: the lock is stale and is taken over
    assert (tmp_path / W.LOCK_NAME).exists()
    with W.OutputLock(tmp_path):
        assert (tmp_path / W.LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_remove_temp_files(tmp_path):
    (tmp_path / ".a.safetensors.tmp").write_bytes(b"x")
    (tmp_path / "keep.safetensors").write_bytes(b"x")
    assert W.remove_temp_files(tmp_path) == [".a.safetensors.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.safetensors"]
