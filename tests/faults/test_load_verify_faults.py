"""A converted folder that does not keep its promises is refused by `verify` (exit 3 for failed checks,
2 for a manifest it cannot trust) and by `load` (a MoepackError naming the file / tensor / rank); file
names that could leave OUT are refused without ever being opened."""
from __future__ import annotations

import builtins
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from moepack.convert.manifest import SCHEMA_VERSION
from moepack.errors import ManifestError, TargetMismatchError, VerificationError
from moepack.runtime.loader import load

from .expect import BAD_INPUT, assert_refused, assert_verify_failed


def read_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def write_manifest(out: Path, m: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(m, indent=1))


def rank_file(m: dict, rank: int) -> str:
    return m["parallel"]["ranks"][rank]["files"][0]


def renamed(obj, old: str, new: str):
    """`obj` (manifest JSON) with every string value and dict key equal to `old` replaced by `new`."""
    if isinstance(obj, dict):
        return {(new if k == old else k): renamed(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [renamed(v, old, new) for v in obj]
    return new if obj == old else obj


@pytest.fixture
def gpt_tp2(converted, out_copy):
    """A writable copy of gpt-oss tiny converted for triton/h100 at tp 2."""
    return out_copy(converted("gpt-oss", "triton", "h100", 2, 1))


@pytest.fixture
def opened(monkeypatch):
    """Every path opened through open / io.open / os.open / safetensors.safe_open from now on."""
    import safetensors

    seen: list[Path] = []

    def spy(real, path_arg=0):
        def wrapper(*args, **kwargs):
            p = args[path_arg] if len(args) > path_arg else kwargs.get("file", kwargs.get("filename"))
            if isinstance(p, (str, os.PathLike)):
                seen.append(Path(os.path.abspath(p)))
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(io, "open", spy(io.open))
    monkeypatch.setattr(os, "open", spy(os.open))
    monkeypatch.setattr(safetensors, "safe_open", spy(safetensors.safe_open))
    return seen


# ------------------------------------------------------------------------------------------ tampering

def test_tampered_tensor_hash_fails_full_verify_and_full_load(cli, gpt_tp2):
    m = read_manifest(gpt_tp2)
    entry = m["experts"][0]
    entry["ranks"][1]["xxh3_128"] = "0" * 32
    write_manifest(gpt_tp2, m)
    assert_verify_failed(cli("verify", gpt_tp2, "--level", "full"), entry["name"], "tensor-hash")
    with pytest.raises(VerificationError, match=entry["name"].replace(".", r"\.")):
        load(gpt_tp2, rank=1, check="full")


def test_tampered_tensor_shape_fails_quick_verify_and_load(cli, gpt_tp2):
    m = read_manifest(gpt_tp2)
    entry = m["experts"][3]
    entry["ranks"][0]["shape"][-1] += 2
    write_manifest(gpt_tp2, m)
    assert_verify_failed(cli("verify", gpt_tp2, "--level", "quick"), entry["name"], "shape")
    with pytest.raises(VerificationError, match=r"shape"):
        load(gpt_tp2, rank=0)


def test_tampered_tensor_dtype_fails_quick_verify_and_load(cli, gpt_tp2):
    m = read_manifest(gpt_tp2)
    name, rec = next((n, r) for n, r in m["shared"].items() if r["dtype"] == "BF16")
    rec["dtype"] = "F16"
    write_manifest(gpt_tp2, m)
    assert_verify_failed(cli("verify", gpt_tp2, "--level", "quick"), name, "dtype")
    with pytest.raises(VerificationError, match=r"dtype"):
        load(gpt_tp2, rank=0)


def test_missing_part_file_fails_verify_and_load_of_its_rank(cli, gpt_tp2):
    part = rank_file(read_manifest(gpt_tp2), 1)
    (gpt_tp2 / part).unlink()
    assert_verify_failed(cli("verify", gpt_tp2, "--level", "quick"), part, "missing")
    with pytest.raises(VerificationError, match=part):
        load(gpt_tp2, rank=1)


def test_truncated_part_file_fails_verify_and_load(cli, gpt_tp2):
    part = rank_file(read_manifest(gpt_tp2), 0)
    data = (gpt_tp2 / part).read_bytes()
    (gpt_tp2 / part).write_bytes(data[:-100])
    assert_verify_failed(cli("verify", gpt_tp2, "--level", "quick"), part, "truncated")
    with pytest.raises(VerificationError, match=part):
        load(gpt_tp2, rank=0)


# ------------------------------------------------------------------------------------------ the manifest itself

def test_manifest_of_a_newer_schema_is_refused_asking_for_an_upgrade(cli, gpt_tp2):
    m = read_manifest(gpt_tp2)
    m["moepack_manifest"] = SCHEMA_VERSION + 1
    write_manifest(gpt_tp2, m)
    assert_refused(cli("verify", gpt_tp2), BAD_INPUT, f"schema {SCHEMA_VERSION + 1}", "upgrade")
    with pytest.raises(ManifestError, match="upgrade"):
        load(gpt_tp2)


def test_manifest_of_schema_1_is_refused_asking_to_convert_again(cli, gpt_tp2):
    """What the previous moepack wrote: version 1, a sha256 per tensor record instead of xxh3_128."""
    m = read_manifest(gpt_tp2)
    m["moepack_manifest"] = 1
    for rec in [r for e in m["experts"] for r in e["ranks"]] + list(m["shared"].values()):
        rec["sha256"] = rec.pop("xxh3_128") * 2
    write_manifest(gpt_tp2, m)
    line = assert_refused(cli("verify", gpt_tp2, "--level", "quick"), BAD_INPUT, "manifest.json", "schema version 1",
                          "older moepack", "convert again")
    assert line == "error: manifest.json: schema version 1 was written by an older moepack; convert again"
    with pytest.raises(ManifestError, match="^manifest.json: schema version 1 was written by an older moepack; "
                                            "convert again$"):
        load(gpt_tp2)


def test_missing_manifest_is_refused_as_incomplete(cli, gpt_tp2):
    (gpt_tp2 / "manifest.json").unlink()
    assert_refused(cli("verify", gpt_tp2), BAD_INPUT, "manifest.json", str(gpt_tp2))
    assert_refused(cli("run", gpt_tp2), BAD_INPUT, "manifest.json")
    with pytest.raises(ManifestError, match="manifest.json"):
        load(gpt_tp2)


def test_garbage_manifest_is_refused_naming_it(cli, gpt_tp2):
    (gpt_tp2 / "manifest.json").write_text('{"moepack_manifest": 1, "tool": ')
    assert_refused(cli("verify", gpt_tp2), BAD_INPUT, "manifest.json", "JSON")
    with pytest.raises(ManifestError, match="JSON"):
        load(gpt_tp2)


# ------------------------------------------------------------------------------------------ escaping OUT

def _decoy(tmp_path: Path) -> Path:
    """A file outside OUT that would fail differently (not safetensors) if anything read it."""
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00NOT-A-HEADER-XYZ" + b"\0" * 64)
    return victim


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_manifest_file_name_escaping_out_is_refused_and_never_opened(cli, gpt_tp2, tmp_path, opened, how):
    victim = _decoy(tmp_path)
    old = rank_file(read_manifest(gpt_tp2), 0)
    new = "../victim.safetensors" if how == "dotdot" else str(victim)
    assert (gpt_tp2 / new).resolve() == victim.resolve()
    write_manifest(gpt_tp2, renamed(read_manifest(gpt_tp2), old, new))
    opened.clear()
    assert_refused(cli("verify", gpt_tp2, "--level", "full"), BAD_INPUT, new)
    assert_refused(cli("run", gpt_tp2), BAD_INPUT, new)
    with pytest.raises(ManifestError, match="refused"):
        load(gpt_tp2, rank=0, check="full")
    assert victim.resolve() not in {p.resolve() for p in opened}, "a file outside OUT was opened"


def test_symlinked_part_leading_out_of_out_is_refused_and_never_opened(cli, gpt_tp2, tmp_path, opened):
    part = rank_file(read_manifest(gpt_tp2), 0)
    outside = tmp_path / "outside.safetensors"
    shutil.move(gpt_tp2 / part, outside)           # the real, valid bytes: following the link would pass
    (gpt_tp2 / part).symlink_to(outside)
    opened.clear()
    assert_refused(cli("verify", gpt_tp2, "--level", "full"), BAD_INPUT, part, "symlink")
    with pytest.raises(ManifestError, match="symlink"):
        load(gpt_tp2, rank=0)
    assert outside.resolve() not in {p.resolve() for p in opened}, "the symlink's target outside OUT was opened"


def test_symlinked_manifest_is_refused(cli, gpt_tp2, tmp_path):
    outside = tmp_path / "manifest-elsewhere.json"
    shutil.move(gpt_tp2 / "manifest.json", outside)
    (gpt_tp2 / "manifest.json").symlink_to(outside)
    assert_refused(cli("verify", gpt_tp2), BAD_INPUT, "manifest.json", "symlink")
    with pytest.raises(ManifestError, match="symlink"):
        load(gpt_tp2)


# ------------------------------------------------------------------------------------------ wrong rank / device

@pytest.mark.parametrize("rank", [2, -1])
def test_rank_outside_the_world_size_is_refused_naming_the_range(cli, converted, rank):
    out = converted("gpt-oss", "triton", "h100", 2, 1)
    with pytest.raises(TargetMismatchError, match=rf"rank {rank}.*world_size 2"):
        load(out, rank=rank)
    assert_refused(cli("run", out, "--rank", rank), BAD_INPUT, f"rank {rank}", "world_size 2")


def test_vendor_layout_on_the_wrong_device_is_refused_without_emulation(converted):
    out = converted("gpt-oss", "aiter", "mi355x", 1, 1)
    with pytest.raises(TargetMismatchError, match=r"aiter/mi355x.*allow_emulation"):
        load(out, rank=0, device="cpu")
    assert load(out, rank=0, device="cpu", allow_emulation=True).execution.emulated


def test_flashinfer_layout_on_cpu_is_refused_without_emulation(converted):
    out = converted("nemotron-h", "flashinfer-cutlass", "h100", 1, 1)
    with pytest.raises(TargetMismatchError, match=r"flashinfer-cutlass/h100"):
        load(out, rank=0, device="cpu")


def test_part_whose_tensor_runs_past_its_end_fails_verify_instead_of_crashing(cli, gpt_tp2):
    """A part rewritten with a tensor's data_offsets past EOF, the manifest's size and file hash made to
    match: every level must report it (exit 3), never crash inside safetensors (exit 1)."""
    import hashlib
    import struct

    m = read_manifest(gpt_tp2)
    part = rank_file(m, 0)
    raw = (gpt_tp2 / part).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    header[last]["data_offsets"] = [o + len(data) for o in header[last]["data_offsets"]]
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    raw = struct.pack("<Q", len(hb)) + hb + data
    (gpt_tp2 / part).write_bytes(raw)
    m["files"][part].update(size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    write_manifest(gpt_tp2, m)
    for level in ("quick", "full"):
        assert_verify_failed(cli("verify", gpt_tp2, "--level", level), last)
    with pytest.raises(VerificationError, match=last.replace(".", r"\.")):
        load(gpt_tp2, rank=0)
