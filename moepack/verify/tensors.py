"""Tensor plumbing shared by the source and numeric checks: reading stored parts, placing source
tensors into a canonical tensor, and locating the first differing element of two tensors.

A manifest `experts` entry's `sources` are the `SourcePiece`s of `moepack/formats/model.py`; its
canonical tensor is assembled from / split into source tensors by `moepack/formats/assemble.py`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..bits import as_bits, same_bytes
from ..formats.model import CanonicalTensor, SourcePiece

def first_difference(got: torch.Tensor, want: torch.Tensor) -> str | None:
    """None when `got` and `want` have the same dtype, shape and bits; else a one-line description
    (how many elements differ, and the first one by index with both values)."""
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}"
    if tuple(got.shape) != tuple(want.shape):
        return f"shape {list(got.shape)}, expected {list(want.shape)}"
    if same_bytes(got, want):  # the common case, without a [numel] bool mask (15 GB of them in a full verify)
        return None
    a, b = as_bits(got), as_bits(want)
    ne = a != b
    count = int(ne.sum())
    flat, idx = first_true(ne)
    g, w = got.reshape(-1)[flat], want.reshape(-1)[flat]
    return f"{count} of {got.numel()} elements differ; first at {idx}: {show_value(g)}, expected {show_value(w)}"


def first_true(mask: torch.Tensor) -> tuple[int, list[int]]:
    """(flat index, index per dim) of the first True element of a non-empty boolean mask with one."""
    flat = int(torch.nonzero(mask.reshape(-1))[0])
    idx = [int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(mask.shape))] if mask.dim() else []
    return flat, idx


def show_value(v: torch.Tensor) -> str:
    if v.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool):
        return str(int(v))
    try:
        return f"{float(v.to(torch.float64)):g}"
    except (RuntimeError, TypeError):
        return f"0x{int(as_bits(v)):x}"


def read_stored(path: Path, name: str) -> torch.Tensor:
    """One tensor from a safetensors file (memory-mapped read, never pickle)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name)


def canonical_tensor(entry: dict) -> CanonicalTensor:
    """The `CanonicalTensor` (formats/model.py) a manifest `experts` entry describes."""
    pieces = tuple(SourcePiece(p["name"], p["expert"], tuple(p["rows"]), tuple(p["shape"]), p["dtype"])
                   for p in entry["sources"])
    return CanonicalTensor(entry["role"], tuple(entry["logical_shape"]), entry["logical_dtype"], pieces)
