"""Tensors as raw bits: reinterpret elements as integers of a chosen width, compare bytes.

Used wherever bytes matter and values do not (convert's fused copies move 16-byte items; verify compares
parts as int64 words, since torch.equal on CPU steps element by element).
"""
from __future__ import annotations

import torch

ITEM_DTYPE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}


def as_items(t: torch.Tensor, width: int) -> torch.Tensor | None:
    """t's bits as `width`-byte items along its last dim (a view), or None where the layout forbids it
    (last dim not contiguous or its bytes not a multiple of width, or the data not width-aligned)."""
    try:
        v = t.view(ITEM_DTYPE[t.element_size()])
        if width != t.element_size():
            v = v.view(ITEM_DTYPE[width])
    except RuntimeError:
        return None
    return v if v.data_ptr() % width == 0 else None


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's elements reinterpreted as same-width integers (bit patterns, same shape; 0-d -> [1])."""
    t = t.contiguous()
    if t.dim() == 0:
        t = t.reshape(1)
    return t.view(ITEM_DTYPE[t.element_size()])


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two tensors of one shape and dtype hold the same bytes: compared as int64 words where
    both layouts allow it, else as same-width integers."""
    a, b = a.contiguous().reshape(-1), b.contiguous().reshape(-1)
    wa, wb = as_items(a, 8), as_items(b, 8)
    if wa is not None and wb is not None and a.numel():
        return torch.equal(wa, wb)
    return torch.equal(as_bits(a), as_bits(b))
