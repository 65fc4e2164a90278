"""Tensor plumbing shared by the source and numeric checks: reading stored parts, placing source
tensors into a canonical tensor, and locating the first differing element of two tensors.

Source pieces follow `moepack/formats/model.py`: piece p says `canonical[e, r0:r1, ...]` (or
`canonical[:, r0:r1, ...]` when `expert` is None), read byte for byte, is the source tensor `name`.
"""
from __future__ import annotations

from pathlib import Path

import torch

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's elements reinterpreted as same-width integers (bit patterns, same shape)."""
    t = t.contiguous()
    if t.dim() == 0:
        t = t.reshape(1)
    return t.view(_INT_OF_SIZE[t.element_size()])


def first_difference(got: torch.Tensor, want: torch.Tensor) -> str | None:
    """None when `got` and `want` have the same dtype, shape and bits; else a one-line description
    (how many elements differ, and the first one by index with both values)."""
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, expected {want.dtype}"
    if tuple(got.shape) != tuple(want.shape):
        return f"shape {list(got.shape)}, expected {list(want.shape)}"
    ne = as_bits(got) != as_bits(want)
    count = int(ne.sum())
    if count == 0:
        return None
    flat = int(torch.nonzero(ne.reshape(-1))[0])
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(got.shape))) if got.dim() else ()
    g, w = got.reshape(-1)[flat], want.reshape(-1)[flat]
    return (f"{count} of {got.numel()} elements differ; first at {list(idx)}: "
            f"{_show(g)}, expected {_show(w)}")


def _show(v: torch.Tensor) -> str:
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


def piece_view(canonical: torch.Tensor, piece: dict) -> torch.Tensor:
    """The region of `canonical` a source piece occupies (a view)."""
    r0, r1 = piece["rows"]
    if piece["expert"] is None:
        return canonical[:, r0:r1]
    return canonical[piece["expert"], r0:r1]


def piece_bytes(canonical: torch.Tensor, piece: dict) -> torch.Tensor:
    """[n] uint8: the bytes of the region of `canonical` that source piece `piece` must equal."""
    return piece_view(canonical, piece).contiguous().reshape(-1).view(torch.uint8)


def source_bytes(t: torch.Tensor) -> torch.Tensor:
    """[n] uint8: a source tensor's raw bytes."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def canonical_from_source(read, entry: dict) -> torch.Tensor:
    """The canonical tensor of a manifest `experts` entry, assembled from the source tensors its
    `sources` name; `read(name) -> Tensor` reads one source tensor. Shape `logical_shape`, dtype `logical_dtype`."""
    dtype = getattr(torch, entry["logical_dtype"])
    canonical = torch.zeros(tuple(entry["logical_shape"]), dtype=dtype)
    for piece in entry["sources"]:
        region = piece_view(canonical, piece)
        raw = source_bytes(read(piece["name"]))
        if raw.numel() != region.numel() * region.element_size():
            raise ValueError(f"source tensor {piece['name']} has {raw.numel()} bytes, its place in "
                             f"{entry['name']} {list(region.shape)} needs {region.numel() * region.element_size()}")
        region.copy_(raw.view(dtype).reshape(region.shape))
    return canonical
