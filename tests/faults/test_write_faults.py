"""Writing OUT under faults: a full disk or a refused write stops `convert` with exit 4 and one line
naming the file; SIGKILL at any point leaves no manifest and `--resume` finishes with the same hashes as
a clean run; a second convert into the same OUT is refused (exit 4); OUT that is or holds a symlink is
refused (exit 2) and nothing behind the link changes."""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moepack.verify import verify

from .expect import BAD_INPUT, ENVIRONMENT, assert_nothing_accepted, assert_refused, leftovers

KILLPOINT = Path(__file__).with_name("killpoint.py")
TARGET = ["--backend", "triton", "--hardware", "h100", "--tp", "2", "--no-progress"]
REPO = Path(__file__).resolve().parents[2]


def convert_args(src, out, *extra):
    return ["convert", str(src), str(out), *TARGET, *extra]


def in_subprocess(mode: str, *args, wait: bool = True):
    cmd = [sys.executable, str(KILLPOINT), mode, *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def content_hashes(out: Path) -> dict:
    """Every recorded hash of a finished conversion: files (not the manifest) and tensors per rank."""
    m = json.loads((out / "manifest.json").read_text())
    # part files record `digest` (sha256 of header + tensor xxh3_128s), copied files `sha256`
    return {"files": {n: (r["size"], r.get("digest", r.get("sha256"))) for n, r in m["files"].items()},
            "experts": {e["name"]: [r["xxh3_128"] for r in e["ranks"]] for e in m["experts"]},
            "shared": {n: r["xxh3_128"] for n, r in m["shared"].items()}}


def can_mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ------------------------------------------------------------------------------------------ disk full

def test_disk_full_during_a_part_stops_with_exit_4_naming_the_file(cli, example_ckpt, tmp_path, monkeypatch):
    import moepack.convert.directio as directio

    calls = {"n": 0}
    real = directio._pwrite_all

    def full_disk(fd, buf, offset):
        # the first write that carries a part's bytes (not DirectFile's all-zero alignment probes) does not fit
        if ".safetensors" in os.readlink(f"/proc/self/fd/{fd}") and any(bytes(buf)):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, buf, offset)

    monkeypatch.setattr(directio, "_pwrite_all", full_disk)
    out = tmp_path / "out"
    line = assert_refused(cli(*convert_args(example_ckpt("gpt-oss"), out)), ENVIRONMENT, "disk full", str(out))
    assert ".safetensors" in line, line
    assert calls["n"] == 1
    assert_nothing_accepted(out)
    assert leftovers(out) == [], "a failed part left its temp file"


def test_too_little_free_space_is_refused_before_writing(cli, example_ckpt, tmp_path, monkeypatch):
    import shutil as _shutil

    import moepack.convert.run as run

    real = _shutil.disk_usage
    monkeypatch.setattr(run.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    out = tmp_path / "out"
    line = assert_refused(cli(*convert_args(example_ckpt("gpt-oss"), out)), ENVIRONMENT, "not enough space",
                          str(out), "GB are free")
    assert "1e-06" not in line and "0.00 GB are free" in line, line
    assert_nothing_accepted(out)
    assert not [p for p in out.iterdir() if p.suffix == ".safetensors"], "a part was written anyway"
    monkeypatch.undo()
    assert cli(*convert_args(example_ckpt("gpt-oss"), out, "--resume")).code == 0


def test_real_tiny_tmpfs_filling_up_stops_with_exit_4(cli, example_ckpt, tmp_path, monkeypatch):
    """A real small file system: refused up front by the free-space check; with that check disabled, the
    writes themselves hit ENOSPC and convert still stops cleanly."""
    import moepack.convert.run as run

    mnt = tmp_path / "small-disk"
    if not can_mount_tmpfs(mnt, "size=128k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = mnt / "out"
        assert_refused(cli(*convert_args(example_ckpt("gpt-oss"), out)), ENVIRONMENT, "not enough space", str(out))
        assert_nothing_accepted(out)
        monkeypatch.setattr(run, "_check_free_space", lambda out, nbytes: None)
        assert_refused(cli(*convert_args(example_ckpt("gpt-oss"), out, "--overwrite")), ENVIRONMENT, "disk full",
                       str(out))
        assert_nothing_accepted(out)
    finally:
        umount(mnt)


# ------------------------------------------------------------------------------------------ permission denied

def test_permission_denied_creating_a_part_stops_with_exit_4(cli, example_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_open = os.open

    def guarded_open(path, flags, *a, **k):
        if (flags & os.O_CREAT) and Path(path).parent == out and ".safetensors" in Path(path).name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", guarded_open)
    line = assert_refused(cli(*convert_args(example_ckpt("gpt-oss"), out)), ENVIRONMENT, "permission denied", str(out))
    assert ".safetensors" in line, line
    monkeypatch.undo()
    assert_nothing_accepted(out)


def test_read_only_out_filesystem_stops_with_exit_4(cli, example_ckpt, tmp_path):
    mnt = tmp_path / "ro"
    if not can_mount_tmpfs(mnt, "size=1m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (mnt / "out").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        out = mnt / "out"
        assert_refused(cli(*convert_args(example_ckpt("gpt-oss"), out)), ENVIRONMENT, str(out))
        assert list(out.iterdir()) == []
    finally:
        umount(mnt)


# ------------------------------------------------------------------------------------------ SIGKILL + resume

@pytest.fixture(scope="module")
def killed_runs(example_ckpt, tmp_path_factory):
    """A clean conversion's hashes, and OUTs left by a real SIGKILL at random points of the writing:
    during a random write, right before a random rename, and right before the manifest's rename (the last)."""
    import moepack.convert.directio as directio
    import moepack.convert.writer as writer
    from .conftest import convert_api

    root = tmp_path_factory.mktemp("killed")
    src = example_ckpt("gpt-oss")
    counts = {"write": 0, "replace": 0}
    real_write, real_pwrite, real_replace = writer._write_all, directio._pwrite_all, os.replace
    mp = pytest.MonkeyPatch()

    def counted(kind, real):
        def call(*a, **k):
            counts[kind] += 1
            return real(*a, **k)
        return call

    mp.setattr(writer, "_write_all", counted("write", real_write))
    mp.setattr(directio, "_pwrite_all", counted("write", real_pwrite))
    mp.setattr(os, "replace", counted("replace", real_replace))
    try:
        convert_api(src, root / "clean", tp=2)
    finally:
        mp.undo()
    assert counts["write"] >= 3 and counts["replace"] >= 3, counts
    rng = random.Random(7)
    points = [("write", rng.randint(2, counts["write"] - 1)), ("replace", rng.randint(1, counts["replace"] - 1)),
              ("replace", counts["replace"])]
    killed = {}
    for kind, nth in points:
        out = root / f"killed-{kind}-{nth}"
        r = in_subprocess(f"kill:{kind}:{nth}", *convert_args(src, out))
        assert r.returncode == -9, f"not killed at {kind} {nth}: rc {r.returncode} {r.stderr}"
        killed[(kind, nth)] = out
    return src, content_hashes(root / "clean"), killed


def test_sigkill_at_random_points_then_resume_gives_the_clean_hashes(killed_runs, tmp_path, cli):
    src, want, killed = killed_runs
    for (kind, nth), folder in killed.items():
        out = tmp_path / folder.name
        shutil.copytree(folder, out)
        assert not (out / "manifest.json").exists(), f"killed at {kind} {nth} but a manifest exists"
        assert_nothing_accepted(out)
        res = cli(*convert_args(src, out, "--resume"))
        assert res.code == 0, f"--resume after a kill at {kind} {nth}: {res.err}"
        assert content_hashes(out) == want, f"--resume after a kill at {kind} {nth} differs from a clean run"
        assert leftovers(out) == []
        assert verify(out, source=src, level="full", progress=False).ok


def test_killed_out_without_resume_is_refused_naming_the_flags(killed_runs, cli, tmp_path):
    src, _, killed = killed_runs
    for folder in killed.values():
        out = tmp_path / folder.name
        shutil.copytree(folder, out)
        assert_refused(cli(*convert_args(src, out)), BAD_INPUT, str(out), "--resume", "--overwrite")
        assert_nothing_accepted(out)


# ------------------------------------------------------------------------------------------ two at once

def test_second_convert_into_the_same_out_is_refused_with_exit_4(cli, example_ckpt, tmp_path):
    src = example_ckpt("gpt-oss")
    out, ready, go = tmp_path / "out", tmp_path / "ready", tmp_path / "go"
    first = in_subprocess(f"pause:{ready}:{go}", *convert_args(src, out), wait=False)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), f"first convert never started writing a part: {first.communicate()}"
        for flags in (["--resume"], ["--overwrite"]):     # plain: refused anyway, OUT is not empty
            assert_refused(cli(*convert_args(src, out, *flags)), ENVIRONMENT, str(out), "another convert")
    finally:
        go.touch()
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert verify(out, source=src, level="full", progress=False).ok, "the second convert damaged the first's output"


# ------------------------------------------------------------------------------------------ symlinks

def test_out_that_is_a_symlink_is_refused(cli, example_ckpt, tmp_path):
    real = tmp_path / "real-out"
    real.mkdir()
    link = tmp_path / "out"
    link.symlink_to(real)
    assert_refused(cli(*convert_args(example_ckpt("gpt-oss"), link)), BAD_INPUT, str(link), "symlink")
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_out_holding_a_symlink_is_refused_and_its_target_untouched(cli, example_ckpt, tmp_path, flag):
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model-rank-0-part-0.safetensors").symlink_to(victim)   # where convert would write rank 0
    assert_refused(cli(*convert_args(example_ckpt("gpt-oss"), out, flag)), BAD_INPUT, "symlink",
                   "model-rank-0-part-0.safetensors")
    assert victim.read_bytes() == b"precious"
    assert (out / "model-rank-0-part-0.safetensors").is_symlink()
    assert_nothing_accepted(out)


# ------------------------------------------------------------------------------------------ --overwrite safety

def test_overwrite_never_deletes_files_moepack_did_not_write(cli, example_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_refused(cli(*convert_args(example_ckpt("gpt-oss"), out, "--overwrite")), BAD_INPUT, "--overwrite",
                   "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"
    assert_nothing_accepted(out)


def test_out_equal_to_the_source_is_refused_and_the_source_kept(cli, src_copy):
    src = src_copy()
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    assert_refused(cli(*convert_args(src, src, "--overwrite")), BAD_INPUT, str(src))
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


# ------------------------------------------------------------------------------------------ resume vs a changed source

class _Crash(BaseException):
    """Stands in for a kill: nothing in moepack catches a BaseException that is not an Exception."""


def test_resume_after_the_source_changed_redoes_the_stale_parts(cli, src_copy, tmp_path, monkeypatch):
    from ckpt_edit import rewrite_tensors

    from .conftest import convert_api

    src, out = src_copy(), tmp_path / "out"
    real_replace, renames = os.replace, []

    def crash_at_sixth_rename(*a, **k):
        renames.append(a[1])
        if len(renames) == 6:
            raise _Crash()
        return real_replace(*a, **k)

    monkeypatch.setattr(os, "replace", crash_at_sixth_rename)
    with pytest.raises(_Crash):
        convert_api(src, out, tp=2)
    monkeypatch.undo()
    assert any(str(p).endswith(".safetensors") for p in renames[:2]), renames   # some parts were finished

    def flip(name, t):                # the user re-downloads a fixed checkpoint: expert bytes change
        if name.endswith(("gate_up_proj_blocks", "down_proj_blocks")):
            t = t.clone()
            t.view(-1)[:64] ^= 0x11
        return t

    rewrite_tensors(src, flip)
    res = cli(*convert_args(src, out, "--resume"))
    assert res.code == 0, res.err
    report = verify(out, source=src, level="full", progress=False)
    assert report.ok, f"--resume kept parts converted from the old source: {report.verdict}"
