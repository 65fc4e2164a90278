"""Faster equivalents of `read_canonical` and `Chain.apply` for convert: same bytes, fewer copies.

- `prefetch_canonical(ckpt, ct)`: a WILLNEED hint for the next tensor's source bytes (read-ahead).
- `read_canonical_pread(ckpt, ct)`: each piece whose place in the canonical tensor is contiguous is read
  with one `os.preadv` straight into it (no mmap page faults, no intermediate tensor); other pieces go
  through `Checkpoint.get`. Bit-identical to `formats.assemble.read_canonical`.
- `apply_chain(chain, x)`: when the chain is `[deinterleave_gate_up] [ep_select] (tp_slice |
  block_aligned_tp_slice)` + rank-local steps that begin with pads / half swaps / one pure permutation
  (the AITER shuffles, Triton's gate/up interleave and scale transpose), each rank part is written ONE
  time, straight into its final (pooled) buffer: source rows go to their shuffled places, pads are
  filled only where they are (see the section "one copy per part"). Later local steps run as usual; any
  other chain runs `Chain.apply`. Bit-identical to `Chain.apply` (tests/convert/test_fastpath.py).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
from typing import Callable

import torch

from ..bits import ITEM_DTYPE, as_items
from ..errors import FormatError, PlanError
from ..formats.assemble import _target, canonical_dtype, read_canonical
from ..formats.model import CanonicalTensor
from ..layouts import generic
from ..layouts.aiter import AiterE8m0Shuffle
from ..layouts.generic import (BlockAlignedTpSlice, DeinterleaveGateUp, EpSelect, Pad, SwapHalves, TpSlice, filled,
                               new_buffer)
from ..layouts.transform import Chain, Partition
from ..source.checkpoint import Checkpoint
from .directio import aligned_empty


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
        """An uninitialised tensor of `shape` and `dtype` (contiguous; page-aligned from MIN_BYTES up)."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.MIN_BYTES:
            return torch.empty(shape, dtype=dtype)
        bufs = self._free.setdefault(nbytes, [])
        for buf, idle in bufs:
            if self._users(buf) == idle:
                return buf.view(dtype).view(shape)
        buf = aligned_empty(nbytes)          # page-aligned: written to disk without a copy (directio)
        bufs.append((buf, self._users(buf)))
        return buf.view(dtype).view(shape)

    def __enter__(self) -> "BufferPool":
        self._outer = getattr(generic._buffers, "pool", None)
        generic._buffers.pool = self
        return self

    def __exit__(self, *exc) -> None:
        generic._buffers.pool = self._outer
        self._free.clear()


def pread_into(fd: int, dst: torch.Tensor, offset: int, what: str, error=FormatError) -> memoryview:
    """Fill the contiguous CPU tensor `dst` with the file's bytes from `offset` (preadv until full); returns
    a byte view of `dst`. A file that ends first raises `error(f"{what}: file ends inside the tensor's data")`."""
    view = memoryview(dst.view(-1).view(torch.uint8).numpy()).cast("B")
    pos = 0
    while pos < len(view):
        n = os.preadv(fd, [view[pos:]], offset + pos)
        if n <= 0:
            raise error(f"{what}: file ends inside the tensor's data")
        pos += n
    return view


def prefetch_canonical(ckpt: Checkpoint, ct: CanonicalTensor) -> None:
    """Ask the kernel to start reading `ct`'s source bytes into the page cache (posix_fadvise WILLNEED),
    so the disk reads them while the current tensor is transformed and written. A hint: no data moves
    through this process, and where the call is not available nothing happens."""
    if not hasattr(os, "posix_fadvise"):
        return
    for p in ct.pieces:
        info = ckpt.info(p.name)
        nbytes = info.data_offsets[1] - info.data_offsets[0]
        try:
            fd = os.open(ckpt.root / info.file, os.O_RDONLY)
        except OSError:
            return                     # the read itself reports it
        try:
            os.posix_fadvise(fd, info.file_offset, nbytes, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


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
            view = pread_into(fd, dst, start, f"{info.file}: tensor {p.name}")
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


# ----------------------------------------------------------------------------- one copy per part
#
# For a chain  [deinterleave_gate_up] [ep_select] (tp_slice | block_aligned_tp_slice) + rank-local steps
# whose leading local steps are pads, half swaps and at most one pure permutation (AITER shuffles, Triton
# gate/up interleave or scale transpose), every rank part is written by one pass over its bytes:
# - P, the part just before the permutation (shape S), is a product of per-axis segments: runs of units
#   copied from a run of a source view, or filled with a pad value; every box of the product is either
#   all source or all pad.
# - The permutation views S as mixed-radix digits `dims` and reorders them (`perm`). With S's axes and
#   `dims` refined to common digits, V = (final buffer D viewed in output digit order).permute(back to
#   input digit order) is P as a VIEW of D: copying a source box into V writes D in permuted order.
# - Each box is cut into digit-aligned sub-boxes (ranges of one digit, the lower digits whole), so the
#   matching source run unflattens into the same sub-box shape: one `copy_` (or fill) per sub-box.
# - Where the innermost digit stays innermost, bytes move as 16/8/4/2-byte items (bit copies).
# - Where it does not (e8m0 scale shuffles move single bytes), strided copies would run 2-item inner loops;
#   a gather with a cached per-expert index (one int64 per item of one expert, built once per chain and
#   shape by the same box copies on an arange) is ~4x faster, then the pad boxes are filled.


@dataclasses.dataclass(frozen=True)
class _Seg:
    """Units [start, start + length) of one axis of P: units [src, src + length) of source view `half`
    when `src` is set, else `value` (pad) written by chain step number `tag` (a later step's pad wins)."""
    start: int
    length: int
    src: int | None = None
    half: int = 0
    value: float = 0
    tag: int = -1

    def cut(self, at: int) -> list["_Seg"]:
        """This segment split at unit `at` (one or two segments)."""
        k = at - self.start
        if not 0 < k < self.length:
            return [self]
        tail_src = None if self.src is None else self.src + k
        return [dataclasses.replace(self, length=k),
                dataclasses.replace(self, start=at, length=self.length - k, src=tail_src)]


def _cut_all(segs: list[_Seg], points: list[int]) -> list[_Seg]:
    for p in points:
        segs = [piece for s in segs for piece in s.cut(p)]
    return segs


def _pad_axis(segs: list[_Seg], pad: Pad, tag: int) -> list[_Seg]:
    """Segments of an axis of `pad.halves * from_size` units after `pad` (each half padded separately)."""
    fr, to = pad.from_size, pad.to_size
    out = []
    for s in _cut_all(segs, [k * fr for k in range(1, pad.halves)]):
        k = s.start // fr
        out.append(dataclasses.replace(s, start=k * to + s.start - k * fr))
    out += [_Seg(k * to + fr, to - fr, value=pad.value, tag=tag) for k in range(pad.halves) if to > fr]
    return sorted(out, key=lambda s: s.start)


def _swap_axis(segs: list[_Seg], n: int) -> list[_Seg]:
    """Segments of an axis of 2n units after swapping its halves."""
    moved = [dataclasses.replace(s, start=(s.start + n) % (2 * n)) for s in _cut_all(segs, [n])]
    return sorted(moved, key=lambda s: s.start)


def _partition_segments(part: TpSlice | BlockAlignedTpSlice, tag: int) -> list[list[_Seg]]:
    """Per rank, the segments of the partition's dim (units of the source halves, `half` = which half)."""
    units = part.units() if isinstance(part, BlockAlignedTpSlice) else (part.size, part.padded)
    P = units[1]
    out = []
    if isinstance(part, TpSlice):
        for a, b in part.ranges():
            segs = []
            for h in range(part.halves):
                segs.append(_Seg(h * P, b - a, src=a, half=h))
                segs.append(_Seg(h * P + b - a, P - (b - a), value=part.pad_value, tag=tag))
            out.append([s for s in segs if s.length])
        return out
    for a, b, k0, k1 in part.spans():
        segs = []
        for h in range(part.halves):
            if part.blocks:
                used = k1 - k0
                segs.append(_Seg(h * P, used, src=k0, half=h))
            else:   # zero rows where the slice starts / ends inside a block, then the rank's rows
                used, lead = (k1 - k0) * part.block, a - k0 * part.block
                segs += [_Seg(h * P, lead, value=0, tag=tag), _Seg(h * P + lead, b - a, src=a, half=h),
                         _Seg(h * P + lead + b - a, used - lead - (b - a), value=0, tag=tag)]
            segs.append(_Seg(h * P + used, P - used, value=part.pad_value, tag=tag))
        out.append([s for s in segs if s.length])
    return out


def _permutation(step, shape: list[int], dtype: torch.dtype):
    """`step` on a part of `shape` as (Pad of the last dim or None, dims, perm, output shape): pad, view
    as `dims`, permute to `perm`, lay out row-major in the output shape. None: not a known permutation."""
    try:
        out = step.apply(torch.empty(shape, dtype=dtype, device="meta"))
    except (PlanError, RuntimeError):
        return None
    if out.dtype != dtype:
        return None
    pad = None
    if isinstance(step, AiterE8m0Shuffle):
        (sm, sn), dims, perm = step.padded_view_permutation()
        if math.prod(shape[:-1]) != sm:        # rows padded across the experts dim: not a box
            return None
        if sn != shape[-1]:
            pad = Pad(dim=-1, from_size=shape[-1], to_size=sn, value=step.pad_value)
    elif hasattr(step, "view_permutation"):   # AITER shuffles, Triton gate/up interleave and scale transpose
        dims, perm = step.view_permutation(torch.empty(shape, dtype=dtype, device="meta"))
    else:
        return None
    return pad, tuple(dims), tuple(perm), tuple(out.shape)


def _refine(shape: tuple[int, ...], dims: tuple[int, ...], perm: tuple[int, ...]):
    """Common mixed-radix digits of `shape` and `dims` (most significant first, no 1s): (digits, the
    digit indices of each axis of `shape`, the output digit order) or None when they have none."""
    if math.prod(shape) != math.prod(dims) or 0 in shape:
        return None

    def suffix(sizes):
        out, p = [], 1
        for n in reversed(sizes):
            p *= n
            out.append(p)
        return out
    bounds = sorted(set([1] + suffix(shape) + suffix(dims)))
    if any(hi % lo for lo, hi in zip(bounds, bounds[1:])):
        return None
    places = bounds[-2::-1]                          # place value of each digit, most significant first
    digits = [bounds[len(bounds) - 1 - i] // p for i, p in enumerate(places)]

    def groups(sizes):
        out, below = [], math.prod(sizes)
        for n in sizes:
            below //= n
            out.append([i for i, p in enumerate(places) if below <= p < below * n])
        return out
    of_dims = groups(dims)
    return digits, groups(shape), [i for j in perm for i in of_dims[j]]


def _range_boxes(lo: int, hi: int, radices: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """[lo, hi) of a mixed-radix number as boxes of per-digit ranges (higher digits fixed, one digit a
    range, lower digits whole): each box is a contiguous run, in order."""
    if lo >= hi:
        return []
    if not radices:
        return [()]
    inner = math.prod(radices[1:])
    whole = tuple((0, r) for r in radices[1:])
    d0, r0 = divmod(lo, inner)
    d1, r1 = divmod(hi, inner)
    if d0 == d1:
        return [((d0, d0 + 1),) + b for b in _range_boxes(r0, r1, radices[1:])]
    out = []
    if r0:
        out += [((d0, d0 + 1),) + b for b in _range_boxes(r0, inner, radices[1:])]
        d0 += 1
    if d1 > d0:
        out.append(((d0, d1),) + whole)
    if r1:
        out += [((d1, d1 + 1),) + b for b in _range_boxes(0, r1, radices[1:])]
    return out


@dataclasses.dataclass
class _OneCopy:
    """How to write every part of a chain in one pass (see the section comment)."""
    shape: tuple[int, ...]           # S, the part before the permutation
    digits: list[int]                # common digits of S and the permutation
    groups: list[list[int]]          # digit indices of each axis of S
    order: list[int]                 # digit indices in output (memory) order
    out_shape: tuple[int, ...]       # the part after the permutation (== S when there is none)
    half_axis: int                   # the partition's dim: its segments name the source half
    rest: int                        # index of the first chain step left to Chain.apply
    views: Callable[[torch.Tensor, int], list[torch.Tensor]]   # (x, EP group) -> the source half views
    parts: list[tuple[int, list[list[_Seg]]]]      # per part: its EP group, segments per axis


def _one_copy(chain: Chain, x: torch.Tensor) -> _OneCopy | None:
    """The one-pass plan of `chain` on `x`, or None (the chain is not of the form above, or its own
    checks would fail: then Chain.apply runs and raises)."""
    steps, i, nd = chain.steps, 0, x.dim()
    if x.element_size() not in ITEM_DTYPE or 0 in x.shape:
        return None
    de = ep = None
    if i < len(steps) and isinstance(steps[i], DeinterleaveGateUp):
        de, i = steps[i], i + 1
    if i < len(steps) and isinstance(steps[i], EpSelect):
        ep, i = steps[i], i + 1
    if i >= len(steps) or not isinstance(steps[i], (TpSlice, BlockAlignedTpSlice)):
        return None
    part, tag = steps[i], i
    i += 1
    if any(isinstance(s, Partition) for s in steps[i:]) or not -nd <= part.dim < nd:
        return None
    d = part.dim % nd
    units = part.units() if isinstance(part, BlockAlignedTpSlice) else (part.size, part.padded)
    if x.shape[d] != part.halves * units[0] or d == 0 and ep is not None:
        return None
    if de is not None and (not -nd <= de.dim < nd or de.dim % nd != d or part.halves != 2):
        return None
    groups = ep.ep if ep is not None else 1
    if groups < 1 or x.shape[0] % groups:
        return None
    try:
        rank_segs = _partition_segments(part, tag)
    except PlanError:
        return None
    S = list(x.shape)
    S[0] //= groups
    S[d] = part.halves * units[1]
    El = S[0]

    def views(t: torch.Tensor, g: int) -> list[torch.Tensor]:
        base = t.narrow(0, g * El, El)
        if de is not None:
            pairs = base.unflatten(d, (units[0], 2))
            return [pairs.select(d + 1, h) for h in range(2)]
        return [base.narrow(d, h * units[0], units[0]) for h in range(part.halves)]

    parts = []
    for g in range(groups):
        for segs in rank_segs:
            axes = [[_Seg(0, n, src=0)] for n in S]
            axes[d] = segs
            parts.append((g, axes))

    def pad_all(pad: Pad, tag: int) -> None:
        a = pad.dim % nd
        for _, axes in parts:
            axes[a] = _pad_axis(axes[a], pad, tag)
        S[a] = pad.halves * pad.to_size

    for i in range(i, len(steps)):        # the local steps; `i` ends at the first one not fused
        s = steps[i]
        if isinstance(s, Pad):
            if not (-nd <= s.dim < nd and S[s.dim % nd] == s.halves * s.from_size and s.to_size >= s.from_size):
                return None
            pad_all(s, i)
            continue
        if isinstance(s, SwapHalves):
            if not -nd <= s.dim < nd or S[s.dim % nd] % 2:
                return None
            a = s.dim % nd
            for _, axes in parts:
                axes[a] = _swap_axis(axes[a], S[a] // 2)
            continue
        lowered = _permutation(s, S, x.dtype)
        if lowered is not None:
            pad, dims, order, out_shape = lowered
            padded = S[:-1] + [pad.to_size] if pad is not None else S
            ref = _refine(tuple(padded), dims, order)
            if ref is not None:
                if pad is not None:
                    pad_all(pad, i)
                return _OneCopy(tuple(S), *ref, out_shape, d, i + 1, views, parts)
        break
    else:
        i = len(steps)
    S = tuple(S)
    return _OneCopy(S, *_refine(S, S, tuple(range(nd))), S, d, i, views, parts)


def _write_boxes(plan: _OneCopy, out: torch.Tensor, halves: list[torch.Tensor] | None, axes: list[list[_Seg]],
                 like: torch.Tensor, pads: bool = True) -> None:
    """Write the source boxes of `axes` (unless `halves` is None) and the pad boxes (if `pads`) into `out`,
    a buffer of `plan.out_shape` and `like`'s dtype, through the view of it as the pre-permutation part."""
    esize, last = like.element_size(), plan.groups[-1]
    halves = halves or []
    for width in (16, 8, 4, 2, 1):      # widest item that keeps the innermost digit's runs whole
        f = width // esize
        if width % esize or f < 1:
            continue
        if f > 1 and not (last and plan.order[-1] == last[-1] and plan.digits[last[-1]] % f == 0
                          and all(n % f == 0 for s in axes[-1] for n in (s.start, s.length, s.src or 0))):
            continue
        items = [as_items(out.view(-1), width)] + [as_items(h, width) for h in halves]
        if all(t is not None for t in items):
            break
    digits = list(plan.digits)
    segs = list(axes)
    if f > 1:
        digits[last[-1]] //= f
        segs[-1] = [_Seg(s.start // f, s.length // f, None if s.src is None else s.src // f, s.half, s.value, s.tag)
                    for s in axes[-1]]
    flat, srcs = items[0], items[1:]
    inverse = sorted(range(len(plan.order)), key=plan.order.__getitem__)
    view = flat.view([digits[k] for k in plan.order]).permute(inverse)
    radices = [tuple(digits[k] for k in g) for g in plan.groups]
    patterns: dict[float, torch.Tensor | None] = {}
    for box in itertools.product(*segs):
        fills = [s for s in box if s.src is None]
        if not (pads if fills else srcs):
            continue
        value = max(fills, key=lambda s: s.tag).value if fills else None
        if fills and value not in patterns:
            pat = filled((f,), value, like).view(ITEM_DTYPE[esize]).view(ITEM_DTYPE[width])
            patterns[value] = pat if bool(pat.view(torch.uint8).any()) else None
        for sub in itertools.product(*(_range_boxes(s.start, s.start + s.length, r) for s, r in zip(box, radices))):
            dst = view[tuple(slice(a, b) for ranges in sub for a, b in ranges)]
            if fills:
                pat = patterns[value]
                if pat is None:
                    dst.zero_()
                else:
                    dst.copy_(pat.expand(dst.shape))
                continue
            src = srcs[box[plan.half_axis].half]
            for a in reversed(range(len(box))):
                ranges, r = sub[a], radices[a]
                first = sum(lo * math.prod(r[k + 1:]) for k, (lo, _) in enumerate(ranges))
                sizes = [hi - lo for lo, hi in ranges]
                src = src.narrow(a, box[a].src + first - box[a].start, math.prod(sizes))
                src = src.unflatten(a, sizes) if sizes else src.select(a, 0)
            dst.copy_(src)


def _gathers(plan: _OneCopy, x: torch.Tensor) -> bool:
    """Write parts by a gather of single items instead of strided copies: when the permutation moves items
    one by one (its innermost digit is not the source's: strided copies would run 2-item inner loops,
    ~4x slower than a gather here), experts stay outermost and x is contiguous."""
    last, first = plan.groups[-1], plan.groups[0]
    return (bool(last) and plan.order[-1] != last[-1]
            and plan.order[:len(first)] == first and x.is_contiguous())


_INDEX_CACHE: dict[tuple, torch.Tensor] = {}


def _expert_index(plan: _OneCopy, chain: Chain, x: torch.Tensor, part_no: int) -> torch.Tensor:
    """int64 [n]: for each item of expert 0's block of part `part_no`, the index of its source item in expert
    0's block of x (contiguous); pad items 0. Cached by chain, shape and part: the layers share them."""
    key = (chain, tuple(x.shape), x.dtype, str(x.device), part_no)
    idx = _INDEX_CACHE.get(key)
    if idx is None:
        if len(_INDEX_CACHE) >= 64:
            _INDEX_CACHE.clear()
        one = (1,) + tuple(x.shape[1:])
        shadow = torch.arange(math.prod(one), dtype=torch.int64, device=x.device).view(one).expand(x.shape)
        group, axes = plan.parts[part_no]
        out = torch.empty(plan.out_shape, dtype=torch.int64, device=x.device)   # only expert 0's block is touched
        n = out.numel() // plan.shape[0]
        out.view(-1)[:n].zero_()
        _write_boxes(plan, out, plan.views(shadow, group), [[_Seg(0, 1, src=0)]] + axes[1:], shadow, pads=False)
        idx = _INDEX_CACHE[key] = out.view(-1)[:n].clone()
    return idx


def _write_part(plan: _OneCopy, chain: Chain, x: torch.Tensor, part_no: int) -> torch.Tensor:
    """Part `part_no` of `plan`: a fresh (pooled) buffer of the stored shape, each item written once."""
    group, axes = plan.parts[part_no]
    out = new_buffer(plan.out_shape, x.dtype, x.device)
    if not _gathers(plan, x):
        _write_boxes(plan, out, plan.views(x, group), axes, x)
        return out
    El = plan.shape[0]
    bits = ITEM_DTYPE[x.element_size()]
    src = x.narrow(0, group * El, El).view(bits).view(El, -1)
    idx = _expert_index(plan, chain, x, part_no)
    torch.gather(src, 1, idx.expand(El, idx.numel()), out=out.view(bits).view(El, -1))
    _write_boxes(plan, out, None, axes, x)
    return out


def apply_chain(chain: Chain, x: torch.Tensor) -> list[torch.Tensor]:
    """`chain.apply(x)`, bit for bit; chains of the form above write each part in one pass."""
    plan = _one_copy(chain, x)
    if plan is None:
        return chain.apply(x)
    parts = [_write_part(plan, chain, x, p) for p in range(len(plan.parts))]
    local = Chain(tuple(chain.steps[plan.rest:]))
    return [local.apply(p)[0] for p in parts] if local.steps else parts
