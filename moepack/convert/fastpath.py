"""Faster equivalents of `read_canonical` and `Chain.apply` for convert: same bytes, fewer copies.

- `read_canonical_pread(ckpt, ct)`: each piece whose place in the canonical tensor is contiguous is read
  with one `os.preadv` straight into it (no mmap page faults, no intermediate tensor); other pieces go
  through `Checkpoint.get`. Bit-identical to `formats.assemble.read_canonical`.
- `apply_chain(chain, x)`: when the chain is `[deinterleave_gate_up(dim d)] + tp_slice(dim d) [+ pad of
  another dim with tp_slice's pad value] + rank-local steps`, the prefix runs as ONE copy per rank part
  (the interleaved rows are read through a strided view and land in a part pre-filled with the pad value),
  then the rank-local steps run as usual. Any other chain runs `Chain.apply`. Bit-identical to
  `Chain.apply` (tests/convert/test_fastpath.py compares them).
"""
from __future__ import annotations

import dataclasses
import math
import os

import torch

from ..errors import FormatError
from ..formats.assemble import _target, canonical_dtype, read_canonical
from ..formats.model import CanonicalTensor
from ..layouts import generic
from ..layouts.generic import DeinterleaveGateUp, Pad, TpSlice, filled, new_buffer
from ..layouts.transform import Chain, Partition
from ..source.checkpoint import Checkpoint


class BufferPool:
    """Reused CPU buffers for the transforms' large outputs (>= MIN_BYTES), so a converted tensor's parts land
    in memory that is already mapped (a fresh 75 MB buffer costs ~10 ms of page zeroing here).

        with BufferPool():      # on this thread, layouts.generic.new_buffer (filled, AITER permutes) take from it
            parts = apply_chain(chain, x)

    A buffer is handed out again only once nothing else uses its storage (no tensor, view, numpy array or
    memoryview of it: the writer and hash threads hold those until the bytes are written and hashed), so
    reuse never changes bytes still in flight. Buffers live as long as the pool: at most the peak number
    alive at once, per size."""

    MIN_BYTES = 1 << 20

    def __init__(self) -> None:
        self._free: dict[int, list[tuple[torch.Tensor, int]]] = {}

    @staticmethod
    def _users(buf: torch.Tensor) -> int:
        return torch._C._storage_Use_Count(buf.untyped_storage()._cdata)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of `shape` and `dtype` (contiguous, 64-byte aligned)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.MIN_BYTES:
            return torch.empty(shape, dtype=dtype)
        bufs = self._free.setdefault(nbytes, [])
        for buf, idle in bufs:
            if self._users(buf) == idle:
                return buf.view(dtype).view(shape)
        buf = torch.empty(nbytes, dtype=torch.uint8)
        bufs.append((buf, self._users(buf)))
        return buf.view(dtype).view(shape)

    def __enter__(self) -> "BufferPool":
        self._outer = getattr(generic._buffers, "pool", None)
        generic._buffers.pool = self
        return self

    def __exit__(self, *exc) -> None:
        generic._buffers.pool = self._outer
        self._free.clear()


def _pread_into(fd: int, dst: torch.Tensor, offset: int, what: str) -> memoryview:
    view = memoryview(dst.view(-1).view(torch.uint8).numpy()).cast("B")
    pos = 0
    while pos < len(view):
        n = os.preadv(fd, [view[pos:]], offset + pos)
        if n <= 0:
            raise FormatError(f"{what}: file ends inside the tensor's data")
        pos += n
    return view


def read_canonical_pread(ckpt: Checkpoint, ct: CanonicalTensor, on_read=None) -> torch.Tensor:
    """`read_canonical(ckpt, ct)` ([E, rows, ...] of `ct.dtype`) read with preadv where the target region is
    contiguous; same checks (shape, item size) and FormatError messages for a piece that does not fit.
    `on_read(file, file_offset, memoryview)` is called with each region read by preadv (source hashing)."""
    dtype = canonical_dtype(ct)
    out = new_buffer(ct.shape, dtype)
    slow = []
    for p in ct.pieces:
        info = ckpt.info(p.name)
        dst = _target(out, p)
        nbytes = info.data_offsets[1] - info.data_offsets[0]
        if (tuple(info.shape) != tuple(p.shape) or not dst.is_contiguous()
                or nbytes != dst.numel() * dst.element_size()):
            slow.append(p)
            continue
        fd = os.open(ckpt.root / info.file, os.O_RDONLY)
        try:
            start = info.file_offset
            view = _pread_into(fd, dst, start, f"{info.file}: tensor {p.name}")
        finally:
            os.close(fd)
        if on_read is not None:
            on_read(info.file, start, view)
    if slow:   # the reference path, with its checks and messages, for the pieces above
        rest = dataclasses.replace(ct, pieces=tuple(slow))
        full = read_canonical(ckpt, rest)
        for p in slow:
            _target(out, p).copy_(_target(full, p))
    return out


def _fusable(chain: Chain) -> tuple[DeinterleaveGateUp | None, TpSlice, Pad | None, int] | None:
    """(deinterleave or None, tp_slice, fused pad or None, index of the first remaining step), or None."""
    steps = chain.steps
    i = 0
    de = None
    if i < len(steps) and isinstance(steps[i], DeinterleaveGateUp):
        de, i = steps[i], i + 1
    if i >= len(steps) or not isinstance(steps[i], TpSlice):
        return None
    tp, i = steps[i], i + 1
    if any(isinstance(s, Partition) for s in steps[i:]):
        return None
    pad = None
    if i < len(steps) and isinstance(steps[i], Pad):
        pad = steps[i]
        if pad.halves != 1 or float(pad.value) != float(tp.pad_value):
            pad = None
        else:
            i += 1
    return de, tp, pad, i


def apply_chain(chain: Chain, x: torch.Tensor) -> list[torch.Tensor]:
    """`chain.apply(x)`, bit for bit, with deinterleave + tp_slice (+ pad) fused into one copy per part."""
    plan = _fusable(chain)
    if plan is None:
        return chain.apply(x)
    de, tp, pad, rest = plan
    d = tp.dim % x.dim()
    if (de is not None and de.dim % x.dim() != d) or x.shape[d] != tp.halves * tp.size \
            or (de is not None and tp.halves != 2):
        return chain.apply(x)
    pd = None
    if pad is not None:
        pd = pad.dim % x.dim()
        if pd == d or x.shape[pd] != pad.from_size:
            return chain.apply(x)
    shape = list(x.shape)
    shape[d] = tp.halves * tp.padded
    if pd is not None:
        shape[pd] = pad.to_size
    # half h of the (deinterleaved) rows: rows [h*size, (h+1)*size) of x, or rows h, h+2, ... when interleaved
    if de is not None:
        src = x.unflatten(d, (tp.size, 2))
        halves = [src.select(d + 1, h) for h in range(2)]
    else:
        halves = [x.narrow(d, h * tp.size, tp.size) for h in range(tp.halves)]
    parts = []
    for a, b in tp.ranges():
        part = filled(shape, tp.pad_value, x)
        body = part.narrow(pd, 0, pad.from_size) if pd is not None else part
        for h, half in enumerate(halves):
            body.narrow(d, h * tp.padded, b - a).copy_(half.narrow(d, a, b - a))
        parts.append(part)
    local = Chain(tuple(chain.steps[rest:]))
    return [local.apply(p)[0] for p in parts] if local.steps else parts
