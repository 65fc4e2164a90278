"""Canonical tensors <-> source tensors, byte for byte (see model.py for the SourcePiece contract).

`read_canonical` reads each piece's source tensor and copies its bytes into place; `split_canonical`
is the exact inverse. Dtypes change only by `.view` (same item size), never by a numeric cast.
"""
from __future__ import annotations

import torch

from ..errors import FormatError
from ..source.checkpoint import Checkpoint, torch_dtype
from .model import CanonicalTensor, SourcePiece


def canonical_dtype(ct: CanonicalTensor) -> torch.dtype:
    dt = getattr(torch, ct.dtype, None)
    if not isinstance(dt, torch.dtype):
        raise FormatError(f"canonical tensor {ct.role}: unknown dtype {ct.dtype!r}")
    return dt


def _target(t: torch.Tensor, p: SourcePiece) -> torch.Tensor:
    """The region of canonical tensor `t` that piece `p` covers."""
    lo, hi = p.rows
    return t[p.expert, lo:hi] if p.expert is not None else t[:, lo:hi]


def read_canonical(ckpt: Checkpoint, ct: CanonicalTensor) -> torch.Tensor:
    """Assemble canonical tensor `ct` ([E, rows, ...] of `ct.dtype`) from its source pieces."""
    dtype = canonical_dtype(ct)
    out = torch.empty(ct.shape, dtype=dtype)
    for p in ct.pieces:
        src = ckpt.get(p.name)
        if tuple(src.shape) != tuple(p.shape):
            raise FormatError(f"tensor {p.name}: shape {list(src.shape)} differs from the described {list(p.shape)}")
        if src.element_size() != out.element_size():
            raise FormatError(f"tensor {p.name}: {src.dtype} cannot be viewed as {dtype} (item sizes differ)")
        dst = _target(out, p)
        dst.copy_(src.contiguous().view(dtype).reshape(dst.shape))
    return out


def split_canonical(t: torch.Tensor, ct: CanonicalTensor) -> dict[str, torch.Tensor]:
    """The source tensors of `ct`, each in its source dtype and (torch storage) shape, from canonical `t`."""
    if tuple(t.shape) != tuple(ct.shape):
        raise FormatError(f"canonical tensor {ct.role}: shape {list(t.shape)}, expected {list(ct.shape)}")
    out = {}
    for p in ct.pieces:
        part = _target(t, p).contiguous()
        out[p.name] = part.view(torch_dtype(p.dtype)).reshape(p.shape)
    return out
