"""Backend-independent transforms: gate/up arrangement, EP/TP partitions, padding, exact casts.

Index conventions: `x` is the input, `y` the output; `[a:b]` are half-open row ranges; a "half" is
the gate or the up block of a gated w13 tensor along its rows dim (dim 1), [gate; up] unless said.

The uneven TP rule (docs/DESIGN.md): the intermediate dim of `size` units is cut into granules of
`granule` units; with n = size / granule granules over t ranks, rank r gets
`n // t + (1 if r < n % t else 0)` granules and starts at granule `r * (n // t) + min(r, n % t)`.
Offsets come from these UNPADDED sizes only (the vLLM #42595 bug computed them from padded sizes).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from ..errors import PlanError
from .transform import Partition, Transform, register


# ----------------------------------------------------------------------------- helpers

def tp_ranges(size: int, tp: int, granule: int = 1) -> list[tuple[int, int]]:
    """[(start, stop)] of each of `tp` ranks over `size` units cut in `granule`s (uneven rule above)."""
    if tp < 1 or granule < 1:
        raise PlanError(f"tp ({tp}) and granule ({granule}) must be >= 1")
    if size % granule:
        raise PlanError(f"intermediate size {size} is not a multiple of the split granule {granule}")
    n = size // granule
    if n < tp:
        raise PlanError(f"cannot split intermediate size {size} ({n} granules of {granule}) over {tp} TP ranks")
    base, extra = divmod(n, tp)
    out = []
    for r in range(tp):
        g0 = r * base + min(r, extra)
        g1 = g0 + base + (1 if r < extra else 0)
        out.append((g0 * granule, g1 * granule))
    return out


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


_buffers = threading.local()     # .pool: the BufferPool new_buffer takes from on this thread (convert)


def new_buffer(shape, dtype: torch.dtype, device=None) -> torch.Tensor:
    """torch.empty(shape, dtype, device); on CPU, from this thread's active buffer pool if one is set
    (convert/fastpath.BufferPool: reused buffers cost no page faults). Contents undefined."""
    pool = getattr(_buffers, "pool", None)
    if pool is not None and (device is None or torch.device(device).type == "cpu"):
        return pool.take(tuple(shape), dtype)
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def filled(shape, value, like: torch.Tensor) -> torch.Tensor:
    """A tensor of `shape` with dtype/device of `like`, every element `value` (0 for float8 too)."""
    if like.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz) and value == 0:
        return new_buffer(shape, torch.uint8, like.device).zero_().view(like.dtype)
    return new_buffer(shape, like.dtype, like.device).fill_(value)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two tensors of one dtype and shape (NaN payloads and -0 included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device.type == "meta":
        return True
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def _dim(x: torch.Tensor, dim: int, who: str) -> int:
    if not -x.dim() <= dim < x.dim():
        raise PlanError(f"{who}: dim {dim} out of range for shape {tuple(x.shape)}")
    return dim % x.dim()


def _expect_parts(p: Partition, parts: list) -> None:
    if len(parts) != p.n:
        raise ValueError(f"{p.name}: expected {p.n} parts, got {len(parts)}")


def _halves(x: torch.Tensor, dim: int, halves: int, who: str) -> list[torch.Tensor]:
    d = _dim(x, dim, who)
    if halves < 1 or x.shape[d] % halves:
        raise PlanError(f"{who}: dim {d} of {tuple(x.shape)} does not split into {halves} halves")
    return list(torch.chunk(x, halves, dim=d)) if halves > 1 else [x]


def _pad_along(x: torch.Tensor, dim: int, to: int, value) -> torch.Tensor:
    have = x.shape[dim]
    if have == to:
        return x.contiguous()
    shape = list(x.shape)
    shape[dim] = to
    out = filled(shape, value, x)
    out.narrow(dim, 0, have).copy_(x)
    return out


def check_pad(p: torch.Tensor, value, who: str) -> None:
    if p.numel() and not same_bytes(p, filled(p.shape, value, p)):
        raise ValueError(f"{who}: padding does not hold the pad value {value!r}")


# ----------------------------------------------------------------------------- gate / up arrangement

@register
@dataclass(frozen=True)
class DeinterleaveGateUp(Transform):
    """Rows (2j, 2j+1) = (gate_j, up_j) -> [gate; up] along `dim` (size 2N).

    y[.., j, ..] = x[.., 2j, ..] and y[.., N + j, ..] = x[.., 2j + 1, ..] for j < N (index on `dim`)."""

    name = "deinterleave_gate_up"
    dim: int = 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        d = _dim(x, self.dim, self.name)
        R = x.shape[d]
        if R % 2:
            raise PlanError(f"{self.name}: odd row count {R} on dim {d} of {tuple(x.shape)}")
        v = x.unflatten(d, (R // 2, 2)).transpose(d, d + 1)
        return v.flatten(d, d + 1).contiguous()

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        d = _dim(y, self.dim, self.name)
        R = y.shape[d]
        if R % 2:
            raise PlanError(f"{self.name}: odd row count {R} on dim {d} of {tuple(y.shape)}")
        v = y.unflatten(d, (2, R // 2)).transpose(d, d + 1)
        return v.flatten(d, d + 1).contiguous()


@register
@dataclass(frozen=True)
class InterleaveGateUp(Transform):
    """[gate; up] -> rows (2j, 2j+1) = (gate_j, up_j) along `dim`: the inverse of `deinterleave_gate_up`.

    y[.., 2j, ..] = x[.., j, ..] and y[.., 2j + 1, ..] = x[.., N + j, ..]."""

    name = "interleave_gate_up"
    dim: int = 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return DeinterleaveGateUp(self.dim).invert(x)

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        return DeinterleaveGateUp(self.dim).apply(y)


@register
@dataclass(frozen=True)
class SwapHalves(Transform):
    """[gate; up] <-> [up; gate] along `dim` (size 2N): y[.., i, ..] = x[.., (i + N) mod 2N, ..]. Self-inverse."""

    name = "swap_halves"
    dim: int = 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        a, b = _halves(x, self.dim, 2, self.name)
        return torch.cat([b, a], dim=_dim(x, self.dim, self.name))

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        return self.apply(y)


# ----------------------------------------------------------------------------- partitions

@register
@dataclass(frozen=True)
class EpSelect(Partition):
    """Experts (dim 0, size E) in `ep` contiguous groups: part r = x[r*E/ep : (r+1)*E/ep].

    EP rank r owns global experts r*E/ep + i for local i < E/ep."""

    name = "ep_select"
    ep: int = 1

    @property
    def n(self) -> int:
        return self.ep

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        E = x.shape[0]
        if self.ep < 1 or E % self.ep:
            raise PlanError(f"{self.name}: {E} experts do not split over ep={self.ep}")
        return [p.contiguous() for p in torch.chunk(x, self.ep, dim=0)]

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        _expect_parts(self, parts)
        return torch.cat(parts, dim=0)


@register
@dataclass(frozen=True)
class Replicate(Partition):
    """Every one of `copies` ranks holds the whole tensor: part r = x. `join` checks all copies are
    bitwise equal (ValueError otherwise) and returns the first."""

    name = "replicate"
    copies: int = 1

    @property
    def n(self) -> int:
        return self.copies

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.copies < 1:
            raise PlanError(f"{self.name}: copies must be >= 1, got {self.copies}")
        return [x] * self.copies

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        _expect_parts(self, parts)
        for i, p in enumerate(parts[1:], 1):
            if not same_bytes(p, parts[0]):
                raise ValueError(f"{self.name}: copy {i} differs from copy 0")
        return parts[0]


@register
@dataclass(frozen=True)
class TpSlice(Partition):
    """A TP rank's slice of the intermediate dim, each half padded to `padded` units.

    x: dim `dim` has `halves * size` units (halves=2: gated w13 rows [gate; up]; 1: w2's last dim or
    up_only rows). Units are the tensor's own: rows, packed-FP4 bytes (2 elements), or e8m0 scales
    (32 elements) -- pass `size`, `granule`, `padded` in those units so that every tensor of a layer
    maps the same logical rows (mxfp4: rows I/32/I, bytes I/2/16/Ip/2, scales I/32/1/Ip/32).
    With (a_r, b_r) = tp_ranges(size, tp, granule)[r] and L_r = b_r - a_r:
      part_r[.., h*padded + i, ..] = x[.., h*size + a_r + i, ..]   for i < L_r
      part_r[.., h*padded + i, ..] = pad_value                    for L_r <= i < padded.
    Part shape on `dim`: halves * padded. `join` checks the padding still holds pad_value."""

    name = "tp_slice"
    tp: int = 1
    dim: int = 1
    halves: int = 1
    granule: int = 1
    size: int = 0
    padded: int = 0
    pad_value: float = 0

    @property
    def n(self) -> int:
        return self.tp

    def ranges(self) -> list[tuple[int, int]]:
        rs = tp_ranges(self.size, self.tp, self.granule)
        longest = max(b - a for a, b in rs)
        if self.padded < longest:
            raise PlanError(f"{self.name}: padded size {self.padded} < largest rank slice {longest}")
        return rs

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        d = _dim(x, self.dim, self.name)
        if x.shape[d] != self.halves * self.size:
            raise PlanError(f"{self.name}: dim {d} of {tuple(x.shape)} is not {self.halves} x {self.size}")
        shape = list(x.shape)
        shape[d] = self.halves * self.padded
        parts = []
        for a, b in self.ranges():
            part = filled(shape, self.pad_value, x)     # one copy per part: each half's rows go into place
            for i, h in enumerate(_halves(x, d, self.halves, self.name)):
                part.narrow(d, i * self.padded, b - a).copy_(h.narrow(d, a, b - a))
            parts.append(part)
        return parts

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        _expect_parts(self, parts)
        d = _dim(parts[0], self.dim, self.name)
        halves: list[list[torch.Tensor]] = [[] for _ in range(self.halves)]
        for p, (a, b) in zip(parts, self.ranges()):
            if p.shape[d] != self.halves * self.padded:
                raise ValueError(f"{self.name}: part has {p.shape[d]} units on dim {d}, expected {self.halves * self.padded}")
            for h, ph in enumerate(_halves(p, d, self.halves, self.name)):
                halves[h].append(ph.narrow(d, 0, b - a))
                check_pad(ph.narrow(d, b - a, self.padded - (b - a)), self.pad_value, self.name)
        return torch.cat([t for h in halves for t in h], dim=d)


@register
@dataclass(frozen=True)
class BlockAlignedTpSlice(Partition):
    """TP slice of the intermediate dim of 128x128 block-FP8 tensors that keeps every local block on
    exactly one source scale block, with no requantization.

    Intermediate rows of each half: `size` (elements); rank r owns (a_r, b_r) = tp_ranges(size, tp, granule)[r];
    k0 = a_r // block, k1 = ceil(b_r / block). The rank's local half covers source rows
    [k0*block, k1*block): local row t holds source row k0*block + t when a_r <= k0*block + t < b_r,
    else zero -- zero rows are inserted where the slice starts or ends inside a source block. Then padded
    to `padded` rows (a multiple of `block`) with `pad_value`. So local block j has source scale k0 + j.
      blocks=False (weights: w13 rows, w2 columns; dim has halves*size elements):
        part_r[.., h*padded + t, ..] = x[.., h*size + k0*block + t, ..] if a_r <= k0*block + t < b_r else 0
      blocks=True (scales; dim has halves*ceil(size/block) blocks):
        part_r[.., h*padded/block + j, ..] = x[.., h*ceil(size/block) + k0 + j, ..] for j < k1 - k0, else pad_value
    `join` rebuilds x from the owned rows; for scales a source block held by several ranks must be
    equal in all of them (ValueError otherwise); it also checks padding and inserted rows."""

    name = "block_aligned_tp_slice"
    tp: int = 1
    dim: int = 1
    halves: int = 1
    size: int = 0
    padded: int = 0
    block: int = 128
    granule: int = 1
    blocks: bool = False
    pad_value: float = 0

    @property
    def n(self) -> int:
        return self.tp

    def spans(self) -> list[tuple[int, int, int, int]]:
        """[(a, b, k0, k1)] per rank (see class doc)."""
        out = []
        for a, b in tp_ranges(self.size, self.tp, self.granule):
            out.append((a, b, a // self.block, -(-b // self.block)))
        if self.padded % self.block:
            raise PlanError(f"{self.name}: padded size {self.padded} is not a multiple of the block {self.block}")
        longest = max(self.block * (k1 - k0) for _, _, k0, k1 in out)
        if self.padded < longest:
            raise PlanError(f"{self.name}: padded size {self.padded} < largest block-aligned rank span {longest}")
        return out

    def units(self) -> tuple[int, int]:
        """(units per half in x, units per half in a part)."""
        if self.blocks:
            return -(-self.size // self.block), self.padded // self.block
        return self.size, self.padded

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        d = _dim(x, self.dim, self.name)
        src_half, part_half = self.units()
        if x.shape[d] != self.halves * src_half:
            raise PlanError(f"{self.name}: dim {d} of {tuple(x.shape)} is not {self.halves} x {src_half}")
        parts = []
        for a, b, k0, k1 in self.spans():
            hs = []
            for h in _halves(x, d, self.halves, self.name):
                if self.blocks:
                    local = h.narrow(d, k0, k1 - k0)
                else:
                    lead = list(h.shape)
                    lead[d] = a - k0 * self.block
                    # rows past the source end (last block partial) are zero, like the rows outside [a, b)
                    tail = list(h.shape)
                    tail[d] = k1 * self.block - b
                    local = torch.cat([filled(lead, 0, h), h.narrow(d, a, b - a), filled(tail, 0, h)], dim=d)
                hs.append(_pad_along(local, d, part_half, self.pad_value))
            parts.append(torch.cat(hs, dim=d) if len(hs) > 1 else hs[0])
        return parts

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        _expect_parts(self, parts)
        d = _dim(parts[0], self.dim, self.name)
        src_half, part_half = self.units()
        spans = self.spans()
        out_halves = []
        for h in range(self.halves):
            pieces: list[torch.Tensor] = []
            held: dict[int, torch.Tensor] = {}
            for p, (a, b, k0, k1) in zip(parts, spans):
                if p.shape[d] != self.halves * part_half:
                    raise ValueError(f"{self.name}: part has {p.shape[d]} units on dim {d}, expected {self.halves * part_half}")
                ph = _halves(p, d, self.halves, self.name)[h]
                used = (k1 - k0) if self.blocks else (k1 - k0) * self.block
                check_pad(ph.narrow(d, used, part_half - used), self.pad_value, self.name)
                if self.blocks:
                    for j in range(k1 - k0):
                        blk = ph.narrow(d, j, 1)
                        if k0 + j in held:
                            if not same_bytes(held[k0 + j], blk):
                                raise ValueError(f"{self.name}: ranks disagree on scale block {k0 + j}")
                        else:
                            held[k0 + j] = blk
                else:
                    off = a - k0 * self.block
                    check_pad(ph.narrow(d, 0, off), 0, self.name)
                    check_pad(ph.narrow(d, off + b - a, used - off - (b - a)), 0, self.name)
                    pieces.append(ph.narrow(d, off, b - a))
            if self.blocks:
                pieces = [held[k] for k in range(src_half)]
            out_halves.extend(pieces)
        return torch.cat(out_halves, dim=d)


# ----------------------------------------------------------------------------- rank-local padding and casts

@register
@dataclass(frozen=True)
class Pad(Transform):
    """Pad `dim` from `halves * from_size` to `halves * to_size` units, each half separately, with `value`:
    y[.., h*to_size + i, ..] = x[.., h*from_size + i, ..] for i < from_size, else `value`.
    `invert` drops the padding after checking it still holds `value`."""

    name = "pad"
    dim: int = -1
    from_size: int = 0
    to_size: int = 0
    halves: int = 1
    value: float = 0

    def _check(self, x: torch.Tensor, have: int) -> int:
        d = _dim(x, self.dim, self.name)
        if self.to_size < self.from_size:
            raise PlanError(f"{self.name}: to_size {self.to_size} < from_size {self.from_size}")
        if x.shape[d] != self.halves * have:
            raise PlanError(f"{self.name}: dim {d} of {tuple(x.shape)} is not {self.halves} x {have}")
        return d

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        d = self._check(x, self.from_size)
        hs = [_pad_along(h, d, self.to_size, self.value) for h in _halves(x, d, self.halves, self.name)]
        return torch.cat(hs, dim=d) if len(hs) > 1 else hs[0]

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        d = self._check(y, self.to_size)
        hs = []
        for h in _halves(y, d, self.halves, self.name):
            check_pad(h.narrow(d, self.from_size, self.to_size - self.from_size), self.value, self.name)
            hs.append(h.narrow(d, 0, self.from_size))
        return torch.cat(hs, dim=d) if len(hs) > 1 else hs[0].contiguous()


_WIDENING = {("bfloat16", "float32"), ("float16", "float32")}


@register
@dataclass(frozen=True)
class CastDtype(Transform):
    """Exact widening cast `from_dtype` -> `to_dtype` (bfloat16 or float16 -> float32), e.g. AITER biases.

    bfloat16 -> float32 is done on bits (f32 bits = bf16 bits << 16), so NaN payloads survive and
    `invert` (the high 16 bits) is exact; `invert` refuses values that are not representable (ValueError)."""

    name = "cast_dtype"
    from_dtype: str = "bfloat16"
    to_dtype: str = "float32"

    def _src(self) -> torch.dtype:
        if (self.from_dtype, self.to_dtype) not in _WIDENING:
            raise PlanError(f"{self.name}: {self.from_dtype} -> {self.to_dtype} is not an exact widening cast")
        return getattr(torch, self.from_dtype)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        src = self._src()
        if x.dtype != src:
            raise PlanError(f"{self.name}: expected {self.from_dtype}, got {x.dtype}")
        if src == torch.bfloat16:
            return (x.contiguous().view(torch.int16).to(torch.int32) << 16).view(torch.float32)
        return x.to(torch.float32)

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        src = self._src()
        if y.dtype != torch.float32:
            raise PlanError(f"{self.name}: expected float32, got {y.dtype}")
        if src == torch.bfloat16:
            bits = y.contiguous().view(torch.int32)
            if y.device.type != "meta" and bool((bits & 0xFFFF).any()):
                raise ValueError(f"{self.name}: float32 values not representable in bfloat16")
            return (bits >> 16).to(torch.int16).view(torch.bfloat16)
        out = y.to(src)
        if y.device.type != "meta" and not same_bytes(out.to(torch.float32), y):
            raise ValueError(f"{self.name}: float32 values not representable in {self.from_dtype}")
        return out


__all__ = [
    "tp_ranges", "round_up", "new_buffer", "filled", "same_bytes", "check_pad",
    "DeinterleaveGateUp", "InterleaveGateUp", "SwapHalves",
    "EpSelect", "Replicate", "TpSlice", "BlockAlignedTpSlice", "Pad", "CastDtype",
]
