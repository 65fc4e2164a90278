"""MXFP4 weight tiles for the Triton fused MoE, dequantized in registers.

Reads the moepack Triton layout (moepack/layouts/triton.py): packed bytes [E, N, K/2] nibble-split in
chunks of CH elements (byte j of a chunk: element j low, element j + CH/2 high), e8m0 scales
transposed to [E, K/32, N]. A K-step of BK elements (a multiple of CH) is computed as two dots:
the low nibbles against the activation columns of each chunk's first half, the high nibbles against
the second halves. No unpacked value is ever interleaved in registers.

e2m1 -> float: the 3 magnitude bits placed at fp16 bits 9..11 and the sign at bit 15 give the FP4
value times 2^-14 exactly (code 1 lands on the fp16 subnormal 2^-15); the e8m0 code s becomes the
float32 2^(s - 127 + 14) by writing (s + 14) into the exponent field (valid for s <= 240).
"""
from __future__ import annotations

import triton
import triton.language as tl


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


@triton.jit
def mxfp4_step(acc, a_base, a_mask_m, w_base, s_base, stride_sk, offs_n, mask_n, k0, K,
               BN: tl.constexpr, BK: tl.constexpr, CH: tl.constexpr):
    """acc [BM, BN] += A[:, k0:k0+BK] @ W[offs_n, k0:k0+BK].T for one K-step.

    a_base: [BM, 1] pointers to the activation rows (contiguous along K); w_base: [BN, 1] pointers to the
    packed rows; s_base: [1, BN] pointers to the scale columns (row stride stride_sk per 32 elements)."""
    offs_lo = half_offsets(BK, CH)
    k_lo = k0 + offs_lo
    m_lo = k_lo < K
    a_lo = tl.load(a_base + k_lo[None, :], mask=a_mask_m & m_lo[None, :], other=0.0)
    a_hi = tl.load(a_base + (k_lo + CH // 2)[None, :], mask=a_mask_m & m_lo[None, :], other=0.0)
    jb = k0 // 2 + tl.arange(0, BK // 2)
    wb = tl.load(w_base + jb[None, :], mask=mask_n[:, None] & (jb < K // 2)[None, :], other=0)
    run = k0 // 32 + tl.arange(0, BK // CH) * (CH // 32)
    m_run = run < K // 32
    s_lo = tl.load(s_base + run[:, None] * stride_sk, mask=m_run[:, None] & mask_n[None, :], other=127)
    s_hi = tl.load(s_base + (run + CH // 64)[:, None] * stride_sk, mask=m_run[:, None] & mask_n[None, :], other=127)
    w_lo = _decode(wb & 15, s_lo, BN, BK, CH, a_lo.dtype)
    w_hi = _decode(wb >> 4, s_hi, BN, BK, CH, a_lo.dtype)
    acc = tl.dot(a_lo, tl.trans(w_lo), acc)
    acc = tl.dot(a_hi, tl.trans(w_hi), acc)
    return acc
