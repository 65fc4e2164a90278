"""Test helpers that damage or rewrite checkpoints on disk (for the bad-input tests)."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def raw_tensor_bytes(folder: Path, file: str, name: str) -> bytes:
    """The stored bytes of tensor `name`, read straight from the file (independent of moepack)."""
    with open(folder / file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        lo, hi = header[name]["data_offsets"]
        f.seek(8 + n + lo)
        return f.read(hi - lo)


def index_of(folder: Path) -> dict:
    return json.loads((folder / "model.safetensors.index.json").read_text())


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def rewrite_tensors(folder: Path, edit) -> None:
    """Rewrite every safetensors file: `edit(name, tensor)` returns a tensor, or None to drop it."""
    idx = index_of(folder)
    weight_map = {}
    for fname in sorted(set(idx["weight_map"].values())):
        tensors = load_file(str(folder / fname))
        new = {}
        for name, t in tensors.items():
            out = edit(name, t)
            if out is not None:
                new[name] = out.contiguous().clone()
                weight_map[name] = fname
        save_file(new, str(folder / fname))
    idx["weight_map"] = weight_map
    (folder / "model.safetensors.index.json").write_text(json.dumps(idx))


def write_raw_safetensors(path: Path, header: dict | bytes, data: bytes, header_len: int | None = None) -> None:
    """A safetensors file with an arbitrary header (dict -> JSON) and data section."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if header_len is None else header_len))
        f.write(raw)
        f.write(data)


def as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
