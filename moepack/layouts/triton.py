"""The moepack Triton layout: rank-local steps that turn logical expert tensors into what the
Triton fused-MoE kernels (moepack/kernels/triton_*.py) load directly.

Logical (see docs/DESIGN.md) -> stored, per role:

| quant       | role               | steps                                              | stored shape                  |
| ----------- | ------------------ | -------------------------------------------------- | ----------------------------- |
| mxfp4       | w13_weight         | interleave_gate_up (gated), nibble_split(chunk),   | [E, 2Ip, H/2] uint8           |
|             |                    | fp4_mma_tiles, fp4_bf16_bits (*)                   |                               |
| mxfp4       | w13_weight_scale   | interleave_gate_up (gated), transpose_last2        | [E, H/32, 2Ip] uint8          |
| mxfp4       | w13_bias           | interleave_gate_up (gated)                         | [E, 2Ip]                      |
| mxfp4       | w2_weight          | nibble_split(chunk), fp4_mma_tiles,                | [E, H, Ip/2] uint8            |
|             |                    | fp4_bf16_bits (*)                                  |                               |
| mxfp4       | w2_weight_scale    | transpose_last2                                    | [E, Ip/32, H] uint8           |
| fp8_*       | w13_weight         | interleave_gate_up (gated)                         | [E, 2Ip, H] float8_e4m3fn     |
| anything else                    | (none: stored = logical)                           |                               |

(*) where rows % 16 == 0 and K % 64 == 0 (`mma_tiles_fit`); other shapes keep the nibble-split bytes.

Why:
- `interleave_gate_up`: rows (2j, 2j+1) = (gate_j, up_j). One `tl.dot` over a tile of 2*BN stored rows
  yields gate and up of BN outputs side by side; the accumulator's adjacent column pairs live in one
  thread, so splitting them for the fused activation costs no data movement.
- `nibble_split(chunk)`: inside each chunk of `chunk` K-elements (chunk/2 bytes), byte j holds element j
  in its low nibble and element j + chunk/2 in its high nibble. The kernel then multiplies the low
  nibbles with the first half of the activation chunk and the high nibbles with the second half:
  two plain dots, no in-register interleave of unpacked values. chunk = 64 when K % 64 == 0 (each half
  is then exactly one e8m0 scale group), else 32.
- `fp4_mma_tiles`: each group of 16 rows is stored as 512-byte tiles of [16 rows, 32 bytes] in the
  order of Hopper's wgmma register operand (and of mma.sync's 16x16 fragments): a thread's 16 bytes of a
  K-step (rows n and n+8, byte pairs j, j+1 at four K offsets) are contiguous, so it loads them with one
  16-byte vector instead of eight 2-byte loads plus byte shuffles.
- `fp4_bf16_bits`: inside each 4-byte word (after the tiles: bytes (n, j), (n, j+1), (n+8, j), (n+8, j+1)),
  the 8 codes are re-placed so that each bf16x2 operand register falls out of one AND (and one shift, or
  four operations for the last pair): the kernel's FP4 decode drops from ~22 to ~13 instructions a word.
- `transpose_last2` on e8m0 scales: [.., N, K/32] -> [.., K/32, N], so a program's per-K-step scale load
  is contiguous along N (coalesced) instead of one byte per row.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..errors import PlanError
from .aiter import _SameShapePermutation
from .transform import Transform, register


def mxfp4_k_chunk(k_elements: int) -> int:
    """K-elements per `nibble_split` chunk for a packed-FP4 tensor whose rows hold `k_elements` values."""
    if k_elements % 64 == 0:
        return 64
    if k_elements % 32 == 0:
        return 32
    raise PlanError(f"mxfp4 K={k_elements} is not a multiple of 32")


@register
@dataclass(frozen=True)
class InterleaveGateUp(Transform):
    """[E, 2N, ...] rows [gate; up] -> rows (2j, 2j+1) = (gate_j, up_j). Works on any trailing dims."""

    name = "triton_interleave_gate_up"

    def view_permutation(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(dims, perm): apply(x) is x viewed `dims`, permuted to `perm` (x may be a meta tensor)."""
        E, R = x.shape[0], x.shape[1]
        return (E, 2, R // 2, math.prod(x.shape[2:])), (0, 2, 1, 3)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        E, R = x.shape[0], x.shape[1]
        if R % 2:
            raise PlanError(f"{self.name}: odd row count {R} in {tuple(x.shape)}")
        rest = tuple(x.shape[2:])
        return x.reshape(E, 2, R // 2, *rest).transpose(1, 2).reshape(x.shape).contiguous()

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        E, R = y.shape[0], y.shape[1]
        rest = tuple(y.shape[2:])
        return y.reshape(E, R // 2, 2, *rest).transpose(1, 2).reshape(y.shape).contiguous()


@register
@dataclass(frozen=True)
class NibbleSplit(Transform):
    """[..., K/2] uint8 packed FP4 (element 2i low, 2i+1 high) -> same shape, where inside each chunk of
    `chunk` elements byte j holds element j (low nibble) and element j + chunk/2 (high nibble)."""

    name = "triton_nibble_split"
    chunk: int = 64

    def _check(self, x: torch.Tensor) -> None:
        if x.dtype != torch.uint8 or (2 * x.shape[-1]) % self.chunk:
            raise PlanError(f"{self.name}: needs uint8 with K % {self.chunk} == 0, got {x.dtype} {tuple(x.shape)}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        lead, kb = tuple(x.shape[:-1]), x.shape[-1]
        codes = torch.stack([x & 0x0F, x >> 4], dim=-1).reshape(*lead, kb * 2 // self.chunk, 2, self.chunk // 2)
        out = codes[..., 0, :] | (codes[..., 1, :] << 4)
        return out.reshape(x.shape).contiguous()

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        lead, kb = tuple(y.shape[:-1]), y.shape[-1]
        g = y.reshape(*lead, kb * 2 // self.chunk, self.chunk // 2)
        codes = torch.stack([g & 0x0F, g >> 4], dim=-2).reshape(*lead, kb * 2)
        return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


def mma_tiles_fit(rows: int, k_elements: int) -> bool:
    """Whether a packed-FP4 tensor of `rows` rows of `k_elements` values takes `fp4_mma_tiles`."""
    return rows % 16 == 0 and k_elements % 64 == 0


@register
@dataclass(frozen=True)
class Fp4MmaTiles(_SameShapePermutation):
    """[..., N, B] uint8 (B = K/2 bytes; N % 16 == 0, B % 32 == 0) -> same shape. Rows 16g..16g+15 hold
    the B/32 tiles of [16 rows, 32 bytes] one after another; inside tile t, byte (n, j) (row 16g + n,
    byte 32t + j) sits at offset o with bits, high to low, (n2 n1 n0 j2 j1 j4 j3 n3 j0): offset
    16 * lane + register of the wgmma / mma.sync operand layout, lane = (n % 8, j // 2 % 4),
    register = (j // 16, j // 8 % 2, n // 8, j % 2)."""

    name = "triton_fp4_mma_tiles"

    def view_permutation(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """x viewed [L, G, n3, n2, n1, n0, T, j4, j3, j2, j1, j0] -> [L, G, T, n2, n1, n0, j2, j1, j4, j3, n3, j0]."""
        N, B = x.shape[-2], x.shape[-1]
        if x.dtype != torch.uint8 or x.dim() < 2 or N % 16 or B % 32:
            raise PlanError(f"{self.name}: needs uint8 [..., N, B] with N % 16 == 0 and B % 32 == 0, "
                            f"got {x.dtype} {tuple(x.shape)}")
        lead = math.prod(x.shape[:-2])
        return (lead, N // 16, 2, 2, 2, 2, B // 32, 2, 2, 2, 2, 2), (0, 1, 6, 3, 4, 5, 9, 10, 7, 8, 2, 11)


# Fp4Bf16Bits: where each code of a word goes, as (sign bit, magnitude bits m2, m1, m0) of the 32-bit
# little-endian word; order: low nibbles of bytes 0..3, then high nibbles of bytes 0..3.
_FP4_BITS = (
    (15, 8, 7, 6), (31, 24, 23, 22),       # (w) & M                     -> bf16x2 (lo b0, lo b1)
    (12, 5, 4, 3), (28, 21, 20, 19),       # (w << 3) & M                -> (lo b2, lo b3)
    (9, 2, 1, 0), (25, 18, 17, 16),        # (w << 6) & M                -> (hi b0, hi b1)
    (11, 10, 14, 13), (27, 26, 30, 29),    # (((w >> 7) & 0xD800D8) * 0x821) & M -> (hi b2, hi b3)
)


@register
@dataclass(frozen=True)
class Fp4Bf16Bits(Transform):
    """[..., B] uint8 (B % 4 == 0) -> same shape: each 4-byte word (bytes b0..b3, little-endian) holds the
    same 8 FP4 codes with their bits moved to `_FP4_BITS` (sign, m2, m1, m0 per code; codes in the order
    lo b0, lo b1, lo b2, lo b3, hi b0, hi b1, hi b2, hi b3). With M = 0x81C081C0 (sign at bf16 bit 15,
    magnitude at bits 8..6 of each half), the bf16x2 FP4 * 2^-126 pairs of a word w are w & M,
    (w << 3) & M, (w << 6) & M and (((w >> 7) & 0x00D800D8) * 0x821) & M."""

    name = "triton_fp4_bf16_bits"

    def _permute_bits(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        """Each 4-byte word of x (little-endian, as the files store it) -> the OR of its two 16-bit halves'
        images (`_bit_tables`)."""
        if x.dtype != torch.uint8 or x.dim() < 1 or x.shape[-1] % 4:
            raise PlanError(f"{self.name}: needs uint8 [..., B] with B % 4 == 0, got {x.dtype} {tuple(x.shape)}")
        low, high = (t.to(x.device) for t in _bit_tables(inverse))
        h = x.contiguous().view(torch.int16).reshape(-1, 2).long() & 0xFFFF
        return (low[h[:, 0]] | high[h[:, 1]]).view(torch.uint8).reshape(x.shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._permute_bits(x, inverse=False)

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        return self._permute_bits(y, inverse=True)


@functools.cache
def _bit_tables(inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two [65536] int32 tables: the word bits set by each value of a word's low and high 16-bit half, for
    `Fp4Bf16Bits.apply` (or its inverse). `_FP4_BITS` is a permutation of the 32 word bits (code i's bit c,
    bit 8 * (i % 4) + 4 * (i // 4) + c of the plain word, goes to _FP4_BITS[i][3 - c]), so a word's image
    is the OR of its halves' images, in either direction."""
    dest = [0] * 32
    for i, bits in enumerate(_FP4_BITS):
        for c in range(4):
            dest[8 * (i % 4) + 4 * (i // 4) + c] = bits[3 - c]
    assert sorted(dest) == list(range(32))
    to = [dest.index(d) for d in range(32)] if inverse else dest
    v = torch.arange(1 << 16, dtype=torch.int64)
    halves = []
    for half in range(2):
        t = torch.zeros_like(v)
        for bit in range(16):
            t |= ((v >> bit) & 1) << to[16 * half + bit]
        halves.append(t.to(torch.int32))      # bit 31 set -> negative int32, same bits
    return halves[0], halves[1]


@register
@dataclass(frozen=True)
class TransposeLast2(Transform):
    """[..., N, M] -> [..., M, N] (contiguous)."""

    name = "triton_transpose_last2"

    def view_permutation(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(dims, perm): apply(x) is x viewed `dims`, permuted to `perm`, shaped [..., M, N]."""
        return (math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1]), (0, 2, 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2).contiguous()

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        return y.transpose(-1, -2).contiguous()


def ends_in_mma_tiles(steps) -> bool:
    """Whether an MXFP4 weight's rank-local steps end in `fp4_mma_tiles`, `fp4_bf16_bits` (the kernels' TILED
    read; folders converted before those steps existed end in `nibble_split`). Either step anywhere else is
    a layout the kernels cannot read: PlanError."""
    kinds = [type(s) for s in steps]
    tiled = kinds[-2:] == [Fp4MmaTiles, Fp4Bf16Bits]
    if kinds.count(Fp4MmaTiles) + kinds.count(Fp4Bf16Bits) != (2 if tiled else 0):
        raise PlanError("fp4_mma_tiles and fp4_bf16_bits must be the last two steps, in that order, got "
                        + " -> ".join(s.name for s in steps))
    return tiled


def triton_local_steps(role: str, quant: str, gated: bool, local_shape: tuple[int, ...]) -> tuple[Transform, ...]:
    """The rank-local steps from the logical tensor of `role` (shape `local_shape`) to the stored Triton layout."""
    steps: list[Transform] = []
    if gated and role in ("w13_weight", "w13_bias") or (gated and quant == "mxfp4" and role == "w13_weight_scale"):
        steps.append(InterleaveGateUp())
    if quant == "mxfp4":
        if role in ("w13_weight", "w2_weight"):
            steps.append(NibbleSplit(chunk=mxfp4_k_chunk(2 * local_shape[-1])))
            if mma_tiles_fit(local_shape[-2], 2 * local_shape[-1]):
                steps += [Fp4MmaTiles(), Fp4Bf16Bits()]
        elif role in ("w13_weight_scale", "w2_weight_scale"):
            steps.append(TransposeLast2())
    return tuple(steps)


__all__ = ["Fp4Bf16Bits", "Fp4MmaTiles", "InterleaveGateUp", "NibbleSplit", "TransposeLast2", "ends_in_mma_tiles",
           "mma_tiles_fit", "mxfp4_k_chunk", "triton_local_steps"]
