"""`load` refuses, with a one-line MoepackError naming the file / tensor / flag, every folder it must not run:
another target, rank or schema; tampered manifest or bytes; names escaping OUT; missing or resized parts."""
from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import pytest
import torch

from moepack.convert.manifest import SCHEMA_VERSION
from moepack.errors import (EnvironmentError_, ManifestError, MoepackError, TargetMismatchError,
                            VerificationError)
from moepack.runtime import load
from moepack.runtime import loader as loader_mod
from moepack.runtime.moe import Execution
from moepack.source.header import read_header


def _edit(folder: Path, fn) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def _first_expert(m: dict, rank: int = 0) -> tuple[str, dict]:
    ent = m["experts"][0]
    return ent["name"], ent["ranks"][rank]


@pytest.fixture
def gpt_tp2(converted, fresh_copy):
    return fresh_copy(converted("gpt-oss", tp=2))


# --- target, rank, schema ------------------------------------------------------------------------

@pytest.mark.parametrize("backend,hardware,name", [("aiter", "mi355x", "gpt-oss"),
                                                   ("flashinfer-cutlass", "h100", "nemotron-h")])
def test_vendor_layout_refused_on_cpu_without_emulation(converted, backend, hardware, name):
    folder = converted(name, backend=backend, hardware=hardware, tp=2)
    with pytest.raises(TargetMismatchError) as e:
        load(folder, rank=0, device="cpu")
    msg = _one_line(e)
    assert backend in msg and "allow_emulation" in msg
    assert load(folder, rank=0, device="cpu", allow_emulation=True).execution == Execution("reference", emulated=True)


def test_triton_layout_on_cpu_runs_the_reference_unemulated(converted):
    ck = load(converted("gpt-oss", tp=2), rank=1)
    assert ck.execution == Execution("reference", emulated=False) and ck.tp_rank == 1


def test_native_vendor_kernel_hook_says_not_available(converted, monkeypatch):
    """On its own hardware an AITER layout would go to aiter's fused MoE: not wired, and it says so."""
    monkeypatch.setattr(loader_mod, "check_device", lambda target, dev, allow: Execution("aiter"))
    ck = load(converted("gpt-oss", backend="aiter", hardware="mi355x", tp=2), rank=0)
    H = ck.manifest["model"]["hidden"]
    with pytest.raises(EnvironmentError_) as e:
        ck.moe_layers[0](torch.zeros(1, H), torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.int32))
    assert "not available in this build" in _one_line(e) and "allow_emulation=True" in str(e.value)


@pytest.mark.parametrize("rank", [2, 5, -1])
def test_rank_out_of_range_names_the_valid_range(converted, rank):
    with pytest.raises(TargetMismatchError) as e:
        load(converted("gpt-oss", tp=2), rank=rank)
    assert "0..1" in _one_line(e) and str(rank) in str(e.value)


def test_newer_schema_refused(gpt_tp2):
    _edit(gpt_tp2, lambda m: m.update(moepack_manifest=SCHEMA_VERSION + 1))
    with pytest.raises(ManifestError) as e:
        load(gpt_tp2)
    assert "newer" in _one_line(e) and "upgrade" in str(e.value)


def test_newer_tool_refused(gpt_tp2):
    _edit(gpt_tp2, lambda m: m["tool"].update(moepack="0.9.0"))
    with pytest.raises(ManifestError) as e:
        load(gpt_tp2)
    assert "0.9.0" in _one_line(e)


def test_unknown_layout_version_refused(gpt_tp2):
    _edit(gpt_tp2, lambda m: m["target"].update(layout_version=2))
    with pytest.raises(ManifestError) as e:
        load(gpt_tp2)
    assert "layout version 2" in _one_line(e)


def test_arch_contradicting_hardware_refused(gpt_tp2):
    _edit(gpt_tp2, lambda m: m["target"].update(arch="gfx950"))
    with pytest.raises(ManifestError) as e:
        load(gpt_tp2)
    assert "gfx950" in _one_line(e)


def test_unknown_transform_in_chain_refused(gpt_tp2):
    _edit(gpt_tp2, lambda m: m["experts"][0]["chain"].append({"name": "made_up_shuffle"}))
    with pytest.raises(MoepackError) as e:
        load(gpt_tp2)
    assert "made_up_shuffle" in _one_line(e)


def test_no_manifest_means_incomplete(gpt_tp2):
    (gpt_tp2 / "manifest.json").unlink()
    with pytest.raises(ManifestError) as e:
        load(gpt_tp2)
    assert "manifest.json" in _one_line(e)


# --- tampering -----------------------------------------------------------------------------------

def test_tampered_hash_caught_by_full_check_only(gpt_tp2):
    def fn(m):
        m["experts"][0]["ranks"][0]["xxh3_128"] = "0" * 32
    _edit(gpt_tp2, fn)
    name = json.loads((gpt_tp2 / "manifest.json").read_text())["experts"][0]["name"]
    load(gpt_tp2, rank=0, check="fast")
    with pytest.raises(VerificationError) as e:
        load(gpt_tp2, rank=0, check="full")
    assert name in _one_line(e)


def test_flipped_tensor_byte_caught_by_full_check(gpt_tp2):
    m = json.loads((gpt_tp2 / "manifest.json").read_text())
    name, rec = _first_expert(m, rank=1)
    begin = read_header(gpt_tp2 / rec["file"]).tensors[name].begin
    with open(gpt_tp2 / rec["file"], "r+b") as f:        # same size, one byte of the tensor changed
        f.seek(begin)
        b = f.read(1)
        f.seek(begin)
        f.write(bytes([b[0] ^ 0xFF]))
    load(gpt_tp2, rank=0, check="full")                   # rank 0 does not read that file
    with pytest.raises(VerificationError) as e:
        load(gpt_tp2, rank=1, check="full")
    assert name in _one_line(e) and rec["file"] in str(e.value)


@pytest.mark.parametrize("field,value", [("shape", [1, 2, 3]), ("dtype", "BF16")])
def test_tampered_shape_or_dtype_refused(gpt_tp2, field, value):
    name = json.loads((gpt_tp2 / "manifest.json").read_text())["experts"][0]["name"]
    _edit(gpt_tp2, lambda m: m["experts"][0]["ranks"][0].update({field: value}))
    with pytest.raises(VerificationError) as e:
        load(gpt_tp2, rank=0)
    assert name in _one_line(e) and field in str(e.value)


def test_tampered_shared_tensor_shape_refused(gpt_tp2):
    m = json.loads((gpt_tp2 / "manifest.json").read_text())
    shared = sorted(m["shared"])[0]
    _edit(gpt_tp2, lambda m: m["shared"][shared].update(shape=[7]))
    with pytest.raises(VerificationError) as e:
        load(gpt_tp2, rank=1)
    assert shared in _one_line(e)


def test_missing_part_file_named(gpt_tp2):
    m = json.loads((gpt_tp2 / "manifest.json").read_text())
    part = m["parallel"]["ranks"][1]["files"][0]
    (gpt_tp2 / part).unlink()
    load(gpt_tp2, rank=0)
    with pytest.raises(VerificationError) as e:
        load(gpt_tp2, rank=1)
    assert part in _one_line(e) and "missing" in str(e.value)


def test_resized_part_file_named(gpt_tp2):
    part = json.loads((gpt_tp2 / "manifest.json").read_text())["parallel"]["ranks"][0]["files"][0]
    with open(gpt_tp2 / part, "ab") as f:
        f.write(b"\0")
    with pytest.raises(VerificationError) as e:
        load(gpt_tp2, rank=0)
    assert part in _one_line(e) and "size" in str(e.value)


# --- names escaping OUT: refused and never opened ------------------------------------------------

@pytest.fixture
def no_open_outside(monkeypatch):
    """Fail the test if anything opens a path outside OUT (the bait files live in OUT's parent)."""
    real_open = builtins.open
    opened = []

    def guarded(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)) and "bait" in os.fspath(file):
            opened.append(os.fspath(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", guarded)
    import safetensors
    real_safe_open = safetensors.safe_open

    def guarded_safe_open(file, *a, **kw):
        if "bait" in os.fspath(file):
            opened.append(os.fspath(file))
        return real_safe_open(file, *a, **kw)

    monkeypatch.setattr(safetensors, "safe_open", guarded_safe_open)
    return opened


def _rename_part(folder: Path, new_name: str) -> None:
    """Point rank 0's first part (in `files`, `parallel.ranks` and every tensor record) at `new_name`."""
    m = json.loads((folder / "manifest.json").read_text())
    old = m["parallel"]["ranks"][0]["files"][0]
    m["files"][new_name] = m["files"].pop(old)
    m["parallel"]["ranks"][0]["files"][0] = new_name
    for ent in m["experts"]:
        for r in ent["ranks"]:
            if r["file"] == old:
                r["file"] = new_name
    (folder / "manifest.json").write_text(json.dumps(m))
    return old


@pytest.mark.parametrize("style", ["dotdot", "absolute"])
def test_escaping_file_name_refused_never_opened(gpt_tp2, no_open_outside, style):
    bait = gpt_tp2.parent / "bait.safetensors"
    old = (json.loads((gpt_tp2 / "manifest.json").read_text()))["parallel"]["ranks"][0]["files"][0]
    bait.write_bytes((gpt_tp2 / old).read_bytes())
    _rename_part(gpt_tp2, "../bait.safetensors" if style == "dotdot" else str(bait.resolve()))
    with pytest.raises(ManifestError) as e:
        load(gpt_tp2, rank=0, check="full")
    assert "bait.safetensors" in _one_line(e)
    assert no_open_outside == []


def test_symlink_escaping_out_refused_never_opened(gpt_tp2, no_open_outside):
    old = json.loads((gpt_tp2 / "manifest.json").read_text())["parallel"]["ranks"][0]["files"][0]
    bait = gpt_tp2.parent / "bait.safetensors"
    (gpt_tp2 / old).rename(bait)
    (gpt_tp2 / old).symlink_to(bait)
    with pytest.raises(ManifestError) as e:
        load(gpt_tp2, rank=0)
    assert old in _one_line(e) and "symlink" in str(e.value)
    assert no_open_outside == []


# --- flags ---------------------------------------------------------------------------------------

def test_bad_check_and_device_flags_named(converted):
    from moepack.errors import BadInputError
    folder = converted("gpt-oss", tp=2)
    with pytest.raises(BadInputError) as e:
        load(folder, check="paranoid")
    assert "paranoid" in _one_line(e)
    with pytest.raises(BadInputError) as e:
        load(folder, device="gpu7")
    assert "gpu7" in _one_line(e)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_requested_without_a_gpu_is_an_environment_error(converted):
    with pytest.raises(EnvironmentError_) as e:
        load(converted("gpt-oss", tp=2), device="cuda")
    assert "cuda" in _one_line(e)


# --- the target-vs-device table (device properties faked) ---------------------------------------

FI_H100 = {"backend": "flashinfer-cutlass", "hardware": "h100", "arch": "sm90"}
AITER_MI355 = {"backend": "aiter", "hardware": "mi355x", "arch": "gfx950"}
TRITON_H100 = {"backend": "triton", "hardware": "h100", "arch": "sm90"}


@pytest.mark.parametrize("target,arch,hip,expect", [
    (FI_H100, "sm90", None, "flashinfer"),          # its own hardware: the vendor hook
    (FI_H100, "sm100", None, None),                 # a B200 is not an H100
    (FI_H100, "gfx950", "6.4", None),               # ROCm
    (AITER_MI355, "gfx950", "6.4", "aiter"),
    (AITER_MI355, "gfx942", "6.4", None),           # an MI300X is not an MI355X
    (AITER_MI355, "sm90", None, None),
    (TRITON_H100, "sm100", None, "triton"),         # the triton layout does not depend on the GPU
])
def test_target_vs_device(monkeypatch, target, arch, hip, expect):
    monkeypatch.setattr(loader_mod, "_device_arch", lambda dev: arch)
    monkeypatch.setattr(torch.version, "hip", hip)
    dev = torch.device("cuda")
    if expect is None:
        with pytest.raises(TargetMismatchError) as e:
            loader_mod.check_device(target, dev, allow_emulation=False)
        assert target["arch"] in _one_line(e) and arch in str(e.value)
        assert loader_mod.check_device(target, dev, allow_emulation=True) == Execution("reference", emulated=True)
    else:
        assert loader_mod.check_device(target, dev, allow_emulation=False) == Execution(expect)
