"""MXFP4 weight tiles for the Triton fused MoE, dequantized in registers.

Reads the moepack Triton layout (moepack/layouts/triton.py): packed bytes [E, N, K/2] nibble-split in
chunks of CH elements (byte j of a chunk: element j low, element j + CH/2 high), e8m0 scales
transposed to [E, K/32, N]. A K-step of BK elements (a multiple of CH) is computed as two dots:
the low nibbles against the activation columns of each chunk's first half, the high nibbles against
the second halves. No unpacked value is ever interleaved in registers.

TILED (the layout's `triton_fp4_mma_tiles` + `triton_fp4_bf16_bits`, where rows % 16 == 0 and
K % 64 == 0): each 16-row group's K-step is loaded as contiguous 512-byte tiles (`load_tiles`) and
reshaped to [BN, BK/2] in registers; on swap-AB tiles every thread then holds whole 4-byte words.

Decoders: a portable one (any activation dtype, any tile, runs in the CPU interpreter; for TILED it
undoes the bit placement with integer ops first) and, for bf16 on the GPU, inline PTX: on the
nibble-split bytes 4 packed bytes -> 8 scaled bf16 values in ~30 instructions (~26 with FOLD, when
every scale code of the tensor is <= 128, see `small_scales`); on TILED words (swap-AB only) ~9 integer
instructions per word plus one bf16x2 multiply per pair for the scale (FOLD) or two.

e2m1 -> float: the 3 magnitude bits placed at fp16 bits 9..11 and the sign at bit 15 give the FP4
value times 2^-14 exactly (code 1 lands on the fp16 subnormal 2^-15); the e8m0 code s becomes the
float32 2^(s - 127 + 14) by writing (s + 14) into the exponent field (valid for s <= 240).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layouts.triton import Fp4MmaTiles


@triton.jit
def half_offsets(BK: tl.constexpr, CH: tl.constexpr):
    """[BK/2] K offsets (inside a BK step) of the low-nibble elements; the high ones are these + CH/2."""
    j = tl.arange(0, BK // 2)
    return (j // (CH // 2)) * CH + j % (CH // 2)


@triton.jit
def _decode(codes, scale, BN: tl.constexpr, BK: tl.constexpr, CH: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """codes [BN, BK/2] int (0..15), scale [BK/CH, BN] uint8 e8m0 -> [BN, BK/2] OUT_DTYPE."""
    c = codes.to(tl.int16)
    v = (((c & 7) << 9) | ((c & 8) << 12)).to(tl.float16, bitcast=True).to(tl.float32)
    s = ((scale.to(tl.int32) + 14) << 23).to(tl.float32, bitcast=True)
    v = tl.reshape(v, [BN, BK // CH, CH // 2]) * tl.trans(s)[:, :, None]
    return tl.reshape(v, [BN, BK // 2]).to(OUT_DTYPE)


# Hopper bf16 path: 4 packed bytes -> 4 low-nibble and 4 high-nibble bf16 values, already scaled.
# prmt spreads bytes (b0, b1) to bits 0 and 16; shifts and masks put each nibble's magnitude at bf16
# bits 6..8 and its sign at bit 15 (the FP4 value times 2^-126; code 1 is a bf16 subnormal, which
# bf16x2 multiplication handles); mul.bf16x2 by 2^126 (0x7E80) makes it exact FP4, a second by the
# bf16 2^(s - 127) (bits s << 7, so every code 1..254 is exact and 255 is NaN) applies the scale.
# FOLD, for tensors whose every scale code is <= 128: one multiplication by the bf16 2^(s - 1) (exact
# when s <= 128) instead of the two: the same exact product, rounded once, so bit-identical, one
# mul.bf16x2 per 2 values less.
def _unpack_asm(fold: bool) -> str:
    """The PTX body: operand $4 = 4 packed bytes, $5..$8 = bf16x2 scales; outputs $0, $1 (low nibbles of
    bytes 0-1, 2-3) and $2, $3 (high nibbles)."""
    lines = ["{", ".reg .b32 y, m, s;" if fold else ".reg .b32 y, m, s, c;"]
    if not fold:
        lines.append("mov.b32 c, 0x7E807E80;")
    for sel, nibbles in (("0x4140", ((6, 12, 0, 5), (2, 8, 2, 7))), ("0x4342", ((6, 12, 1, 6), (2, 8, 3, 8)))):
        lines.append(f"prmt.b32 y, $4, 0, {sel};")
        for mag, sign, out, scale in nibbles:
            lines.append(f"shl.b32 m, y, {mag}; and.b32 m, m, 0x01C001C0; shl.b32 s, y, {sign}; "
                         "and.b32 s, s, 0x80008000; or.b32 m, m, s;")
            if not fold:
                lines.append("mul.rn.bf16x2 m, m, c;")
            lines.append(f"mul.rn.bf16x2 ${out}, m, ${scale};")
    return "\n" + "\n".join(lines + ["}"]) + "\n"


_UNPACK_ASM = tl.constexpr(_unpack_asm(fold=False))
_UNPACK_FOLD_ASM = tl.constexpr(_unpack_asm(fold=True))


@triton.jit
def _expand_scale_bf16(scale, BN: tl.constexpr, BK: tl.constexpr, CH: tl.constexpr, FOLD: tl.constexpr = False):
    """[BK/CH, BN] e8m0 codes -> [BN, BK/2] bf16 2^(s - 127) (FOLD: 2^(s - 1)), one per low/high-nibble element."""
    if FOLD:
        s = ((scale.to(tl.int16) + 126) << 7).to(tl.bfloat16, bitcast=True)
    else:
        s = (scale.to(tl.int16) << 7).to(tl.bfloat16, bitcast=True)
    s = tl.broadcast_to(tl.trans(s)[:, :, None], [BN, BK // CH, CH // 2])
    return tl.reshape(s, [BN, BK // 2])


# The `triton_fp4_bf16_bits` word (moepack/layouts/triton.py): 4 bytes b0..b3 of nibble-split codes
# re-encoded so that each bf16x2 pair falls out of one or two bit operations:
#   (lo b0, lo b1) = w & M        (lo b2, lo b3) = (w << 3) & M       (hi b0, hi b1) = (w << 6) & M
#   (hi b2, hi b3) = (((w >> 7) & 0x00D800D8) * 0x821) & M      (the three shifted copies never overlap)
# with M = 0x81C081C0: sign at bf16 bit 15, magnitude at bits 8..6, i.e. the FP4 value times 2^-126
# (code 1 is a bf16 subnormal). Without FOLD, mul.bf16x2 by 2^126 (0x7E80) makes it exact FP4.
# The constants, written once for the PTX below and the portable `_word_codes` (the layout tests check them
# against an independent decode):
WORD_PAIR_MASK = 0x81C081C0     # M
WORD_HI23_MASK = 0x00D800D8     # (hi b2, hi b3): the bits kept of w >> 7 ...
WORD_HI23_MUL = 0x821           # ... and the multiplier that copies them into place


def _bits_asm(fold: bool) -> str:
    """PTX: operand $4 = one word; outputs $0, $1 = low nibbles of bytes (0, 1), (2, 3); $2, $3 = high."""
    lines = ["{", ".reg .b32 t;" if fold else ".reg .b32 t, c;\nmov.b32 c, 0x7E807E80;"]
    m, hm, hx = f"0x{WORD_PAIR_MASK:08X}", f"0x{WORD_HI23_MASK:08X}", f"0x{WORD_HI23_MUL:X}"
    for out, expr in (("$0", f"and.b32 $0, $4, {m};"),
                      ("$1", f"shl.b32 t, $4, 3; and.b32 $1, t, {m};"),
                      ("$2", f"shl.b32 t, $4, 6; and.b32 $2, t, {m};"),
                      ("$3", f"shr.b32 t, $4, 7; and.b32 t, t, {hm}; mul.lo.u32 t, t, {hx}; "
                             f"and.b32 $3, t, {m};")):
        lines.append(expr)
        if not fold:
            lines.append(f"mul.rn.bf16x2 {out}, {out}, c;")
    return "\n" + "\n".join(lines + ["}"]) + "\n"


_BITS_ASM = tl.constexpr(_bits_asm(fold=False))
_BITS_FOLD_ASM = tl.constexpr(_bits_asm(fold=True))
_HI23_MASK = tl.constexpr(WORD_HI23_MASK)
_HI23_MUL = tl.constexpr(WORD_HI23_MUL)


@triton.jit
def load_tiles(w_base, mask_n, k0, K, BN: tl.constexpr, BK: tl.constexpr):
    """One K-step of `triton_fp4_mma_tiles` bytes: w_base [BN/16, 1] pointers to the tile's 16-row groups
    (row stride 16 * K/2), mask_n [BN] -> [BN/16, BK*8] uint8, each group's BK/64 512-byte tiles in a row
    (a tile past K/2 is masked to 0 as a whole; K % 64 == 0)."""
    c = tl.arange(0, BK * 8)
    mask_g = tl.max(tl.reshape(mask_n.to(tl.int32), [BN // 16, 16]), axis=1) > 0
    ok_k = (k0 // 2 + (c // 512) * 32) < K // 2
    return tl.load(w_base + k0 * 8 + c[None, :], mask=mask_g[:, None] & ok_k[None, :], other=0)


def _untile_order() -> tuple[int, ...]:
    """The permutation taking a step's bytes, viewed in `Fp4MmaTiles`' stored digit order (group, tile,
    n2 n1 n0 j2 j1 j4 j3 n3 j0), back to the logical one (group, n3..n0, tile, j4..j0): read off the
    transform itself, so the kernel cannot drift from the layout."""
    _, perm = Fp4MmaTiles().view_permutation(torch.empty(16, 32, dtype=torch.uint8, device="meta"))
    stored = [d - 1 for d in perm[1:]]                  # without the leading (batch) digit
    return tuple(stored.index(d) for d in range(len(stored)))


_UNTILE = tl.constexpr(_untile_order())


@triton.jit
def _from_tiles(p, BN: tl.constexpr, BK: tl.constexpr):
    """[BN/16, BK*8] (one K-step of 16-row groups, in `triton_fp4_mma_tiles` order) -> logical [BN, BK/2]."""
    p = tl.reshape(p, [BN // 16, BK // 64, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    p = tl.permute(p, _UNTILE.value)
    return tl.reshape(p, [BN, BK // 2])


@triton.jit
def _pair_codes(x):
    """bf16x2 pattern (sign at bits 15 / 31, magnitude at 8..6 / 24..22) -> [..., 2] codes 0..15."""
    return tl.join(((x >> 12) & 8) | ((x >> 6) & 7), ((x >> 28) & 8) | ((x >> 22) & 7))


@triton.jit
def _word_codes(p, BN: tl.constexpr, BK: tl.constexpr):
    """Portable inverse of `triton_fp4_bf16_bits`: [BN/16, BK*8] re-encoded bytes -> (lo, hi) codes 0..15,
    same shape (element i of a word = byte i's low / high nibble)."""
    q = tl.reshape(p.to(tl.int32), [BN // 16, BK * 2, 4])
    w = tl.sum(q << (8 * tl.arange(0, 4))[None, None, :], axis=2)
    lo = tl.join(_pair_codes(w), _pair_codes(w << 3))                 # [.., words, byte in pair, pair]
    hi = tl.join(_pair_codes(w << 6), _pair_codes(((w >> 7) & _HI23_MASK) * _HI23_MUL))
    lo = tl.reshape(tl.permute(lo, (0, 1, 3, 2)), [BN // 16, BK * 8])
    hi = tl.reshape(tl.permute(hi, (0, 1, 3, 2)), [BN // 16, BK * 8])
    return lo, hi


@triton.jit
def mxfp4_scales(s_base, stride_sk, mask_n, k0, K, BK: tl.constexpr, CH: tl.constexpr):
    """The e8m0 codes of the K-step at k0: (lo, hi) [BK/CH, BN] uint8 for the low- and high-nibble halves
    of each chunk; 127 (scale 1) past K. s_base: [1, BN] pointers to the scale columns (row stride
    stride_sk per 32 elements). The kernel loads them one K-step ahead (a loop-carried prefetch): Triton
    does not pipeline these small loads, and the decode would otherwise wait for them every step."""
    run = k0 // 32 + tl.arange(0, BK // CH) * (CH // 32)
    m_run = run < K // 32
    s_lo = tl.load(s_base + run[:, None] * stride_sk, mask=m_run[:, None] & mask_n[None, :], other=127)
    s_hi = tl.load(s_base + (run + CH // 64)[:, None] * stride_sk, mask=m_run[:, None] & mask_n[None, :], other=127)
    return s_lo, s_hi


@triton.jit
def mxfp4_step(acc, a_base, a_mask_m, w_base, s_lo, s_hi, mask_n, k0, K,
               BN: tl.constexpr, BK: tl.constexpr, CH: tl.constexpr, BF16_ASM: tl.constexpr, SWAP: tl.constexpr,
               FOLD: tl.constexpr, TILED: tl.constexpr = False):
    """acc [BM, BN] += A[:, k0:k0+BK] @ W[offs_n, k0:k0+BK].T for one K-step; with SWAP the accumulator is
    the transpose, acc [BN, BM] += W @ A.T (swap-AB: the decoded weight tile is the MMA's left operand,
    which Hopper's wgmma takes from registers, and the tokens are its narrow N side).

    a_base: [BM, 1] pointers to the activation rows (contiguous along K); w_base: [BN, 1] pointers to the
    packed rows (TILED: [BN/16, 1] pointers to the 16-row groups); s_lo, s_hi: this step's scale codes
    (`mxfp4_scales`)."""
    offs_lo = half_offsets(BK, CH)
    k_lo = k0 + offs_lo
    m_lo = k_lo < K
    a_lo = tl.load(a_base + k_lo[None, :], mask=a_mask_m & m_lo[None, :], other=0.0)
    a_hi = tl.load(a_base + (k_lo + CH // 2)[None, :], mask=a_mask_m & m_lo[None, :], other=0.0)
    if TILED:
        p = load_tiles(w_base, mask_n, k0, K, BN, BK)
    else:
        jb = k0 // 2 + tl.arange(0, BK // 2)
        wb = tl.load(w_base + jb[None, :], mask=mask_n[:, None] & (jb < K // 2)[None, :], other=0)
    if TILED and BF16_ASM and SWAP:
        # the PTX reads each 4-byte word as one operand: pack=4 must group a word's bytes, which holds where
        # the tiles' layout is the wgmma register operand's (swap-AB); pinned by the GPU tests
        w_lo, w_hi = tl.inline_asm_elementwise(_BITS_FOLD_ASM if FOLD else _BITS_ASM, "=r,=r,=r,=r,r", [p],
                                               dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
        w_lo = _from_tiles(w_lo, BN, BK) * _expand_scale_bf16(s_lo, BN, BK, CH, FOLD)
        w_hi = _from_tiles(w_hi, BN, BK) * _expand_scale_bf16(s_hi, BN, BK, CH, FOLD)
    elif TILED:
        c_lo, c_hi = _word_codes(p, BN, BK)
        w_lo = _decode(_from_tiles(c_lo, BN, BK), s_lo, BN, BK, CH, a_lo.dtype)
        w_hi = _decode(_from_tiles(c_hi, BN, BK), s_hi, BN, BK, CH, a_lo.dtype)
    elif BF16_ASM:
        w_lo, w_hi = tl.inline_asm_elementwise(
            _UNPACK_FOLD_ASM if FOLD else _UNPACK_ASM, "=r,=r,=r,=r,r,r,r,r,r",
            [wb, _expand_scale_bf16(s_lo, BN, BK, CH, FOLD), _expand_scale_bf16(s_hi, BN, BK, CH, FOLD)],
            dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    else:
        w_lo = _decode(wb & 15, s_lo, BN, BK, CH, a_lo.dtype)
        w_hi = _decode(wb >> 4, s_hi, BN, BK, CH, a_lo.dtype)
    if SWAP:
        acc = tl.dot(w_lo, tl.trans(a_lo), acc)
        acc = tl.dot(w_hi, tl.trans(a_hi), acc)
    else:
        acc = tl.dot(a_lo, tl.trans(w_lo), acc)
        acc = tl.dot(a_hi, tl.trans(w_hi), acc)
    return acc


def small_scales(*scales) -> bool:
    """True when every e8m0 code of these stored scale tensors is <= 128 (scale <= 2): the bf16 decode may
    then FOLD its 2^126 factor into the scale. One reduction per tensor: call once at load, not per batch."""
    return all(t is not None and t.numel() and int(t.max()) <= 128 for t in scales)
