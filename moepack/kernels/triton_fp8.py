"""FP8 (e4m3fn) weight tiles for the Triton fused MoE, with the activations quantized in the kernel.

- fp8_block (DeepSeek-V3, Qwen3): weight scales per 128x128 block; the activation tile of a K-step
  (BK = 128 = one group) is quantized per row on the fly: s = max(|a|, 1e-10) / 448, q = rne(a / s),
  exactly what a separate per-token-group quantization pass would write, so no extra pass and no extra
  bytes. acc += dot(q_a, q_w^T) * (s_a[:, None] * s_w[None, :]) (`block_scaled_dot`: the factor first, so
  one fused multiply-add per element on plain tiles).
- fp8_tensor (ModelOpt): one static input scale per expert; q = rne(clamp(a / s_in, +-448)); the weight
  and input scalars are applied once in the epilogue.
Weights are stored [E, N, K] K-contiguous (the Triton layout only interleaves w13's gate/up rows),
which is the K-major operand order FP8 wgmma wants.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .pdl import wait_for_previous_grid

FP8_MAX = tl.constexpr(448.0)


@triton.jit
def to_e4m3(v, SOFT_RNE: tl.constexpr):
    """float32 (already within +-448) -> float8e4nv, round to nearest even.

    SOFT_RNE rounds the float32 bits to 3 mantissa bits first (exact for e4m3 normals): the CPU
    interpreter of triton 3.9 gets the carry into the next binade wrong (7.86 -> 4.0), the GPU's
    cvt instruction does not, so only interpreter runs set it."""
    if SOFT_RNE:
        bits = v.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576
        v = bits.to(tl.float32, bitcast=True)
    return v.to(tl.float8e4nv)


@triton.jit
def quant_rows(a, SOFT_RNE: tl.constexpr):
    """a [BM, BK] float -> (q [BM, BK] float8e4nv, s [BM] float32), one scale per row."""
    amax = tl.max(tl.abs(a.to(tl.float32)), axis=1)
    s = tl.maximum(amax, 1e-10) / FP8_MAX
    q = to_e4m3(a.to(tl.float32) / s[:, None], SOFT_RNE)
    return q, s


@triton.jit
def weight_tile(w_base, mask_n, offs_k, mk, w_desc, w_row0, k0, TMA: tl.constexpr):
    """[BN, BK] float8e4nv weight tile: pointer loads from w_base [BN] row pointers, or (TMA) one tensor-
    descriptor copy of rows w_row0 .. w_row0 + BN of the [E * N, K] view (out-of-range K reads zeros)."""
    if TMA:
        return w_desc.load([w_row0, k0])
    else:
        return tl.load(w_base + offs_k[None, :], mask=mask_n[:, None] & mk[None, :], other=0.0)


@triton.jit
def tile_scale_rows(pid_n, n_scale_blocks, BN: tl.constexpr, GATED: tl.constexpr):
    """The (at most two) scale rows the weight rows pid_n * BN + i (i < BN) of tile pid_n use, BN a power of
    two <= 256: (row_a, row_b, pick_b [BN]): row pid_n * BN + i uses row_b where pick_b[i], else row_a.

    GATED (w13 with gate/up rows interleaved, scales [2 * n_scale_blocks, .]: gate blocks, then up blocks):
    the tile's BN / 2 gate rows lie in one 128-row block; even rows gate (row_a), odd rows up (row_b).
    Otherwise row n uses block n // 128, which takes one (BN <= 128) or two (BN = 256: rows from 128 on)
    values per tile. pick_b depends only on i, so the compiler knows it for every accumulator register and
    the per-element select folds away."""
    tl.static_assert(BN <= 256, "fp8_block tiles have block_n <= 256")
    i = tl.arange(0, BN)
    if GATED:
        row_a = (pid_n * (BN // 2)) // 128
        return row_a, n_scale_blocks + row_a, i % 2 == 1
    else:
        row_a = (pid_n * BN) // 128
        return row_a, row_a + (BN - 1) // 128, i >= 128


@triton.jit
def weight_scale_pair(ws_e, row_a, row_b, k0, K, n_rows, stride_s1, stride_s2):
    """(s_a, s_b) float32 scalars: the K-step at k0 of the two scale rows of `tile_scale_rows` in the
    expert's table ws_e [n_rows, ceil(K / 128)]; zeros at k0 >= K or past the last row. The tile's [BN]
    scales are then `tl.where(pick_b, s_b, s_a)`, built in the layout the MMA epilogue wants (a [BN] load
    is laid out for coalescing and moved there through shared memory, after the wgmma wait). Callers load
    them one step ahead: Triton does not pipeline scalar loads."""
    col = (k0 // 128) * stride_s2
    s_a = tl.load(ws_e + row_a * stride_s1 + col, mask=(k0 < K) & (row_a < n_rows), other=0.0)
    s_b = tl.load(ws_e + row_b * stride_s1 + col, mask=(k0 < K) & (row_b < n_rows), other=0.0)
    return s_a, s_b


@triton.jit
def fp8_block_step(acc, a_base, a_mask_m, as_rows, w_base, ws, s_a, s_b, pick_b, mask_n, k0, K, w_desc, w_row0,
                   BK: tl.constexpr, SOFT_RNE: tl.constexpr, PREQ: tl.constexpr, SWAP: tl.constexpr,
                   TMA: tl.constexpr):
    """acc [BM, BN] += dequant(quant(A[:, k0:k0+128])) @ dequant(W[offs_n, k0:k0+128]).T; with SWAP
    acc is [BN, BM] and gets the transpose (W @ A.T: weights on the MMA's 64-row side, tokens on N).

    ws (SWAP) or s_a, s_b, pick_b: the weight scales of this K-step (`block_scaled_dot`)."""
    offs_k = k0 + tl.arange(0, BK)
    mk = offs_k < K
    a = tl.load(a_base + offs_k[None, :], mask=a_mask_m & mk[None, :], other=0.0)
    w = weight_tile(w_base, mask_n, offs_k, mk, w_desc, w_row0, k0, TMA)
    if PREQ:
        qa = a
        sa = tl.load(as_rows + k0 // 128, mask=tl.reshape(a_mask_m, [a_mask_m.shape[0]]), other=0.0)  # [BM]
    else:
        qa, sa = quant_rows(a, SOFT_RNE)
    return acc + block_scaled_dot(qa, sa, w, ws, s_a, s_b, pick_b, SWAP)


@triton.jit
def block_scaled_dot(qa, sa, w, ws, s_a, s_b, pick_b, SWAP: tl.constexpr):
    """One 128-group of K: qa [BM, 128] e4m3 with row scales sa [BM], w [BN, 128] e4m3 with row scales
    -> float32 [BM, BN] = (qa * sa) @ (w * ws).T, or with SWAP its transpose [BN, BM] = W @ A.T.

    The weight rows' scales: SWAP, the vector ws [BN]; otherwise the scalars s_a, s_b and pick_b [BN] of
    `tile_scale_rows` (row i takes s_b where pick_b[i]). There the factor sa * s is formed per row first,
    so, with pick_b known per accumulator register, the caller's accumulate is one fused multiply-add per
    element instead of a multiply and a multiply-add."""
    if SWAP:
        return tl.dot(w, tl.trans(qa)) * ws[:, None] * sa[None, :]
    else:
        f = tl.where(pick_b[None, :], (sa * s_b)[:, None], (sa * s_a)[:, None])
        return tl.dot(qa, tl.trans(w)) * f


@triton.jit
def fp8_tensor_step(acc, a_base, a_mask_m, w_base, inv_in_scale, offs_n, mask_n, k0, K, w_desc, w_row0,
                    BK: tl.constexpr, SOFT_RNE: tl.constexpr, SWAP: tl.constexpr, TMA: tl.constexpr):
    """acc [BM, BN] += quant(A[:, k0:k0+BK] / s_in) @ W[offs_n, k0:k0+BK].T (scalars applied by the caller);
    with SWAP acc is [BN, BM] and gets the transpose."""
    offs_k = k0 + tl.arange(0, BK)
    mk = offs_k < K
    a = tl.load(a_base + offs_k[None, :], mask=a_mask_m & mk[None, :], other=0.0)
    w = weight_tile(w_base, mask_n, offs_k, mk, w_desc, w_row0, k0, TMA)
    qa = to_e4m3(tl.minimum(tl.maximum(a.to(tl.float32) * inv_in_scale, -FP8_MAX), FP8_MAX), SOFT_RNE)
    if SWAP:
        acc = tl.dot(w, tl.trans(qa), acc)
    else:
        acc = tl.dot(qa, tl.trans(w), acc)
    return acc


@triton.jit
def _quant_groups_kernel(X, Q, S, R, K, stride_x, n_groups, BR: tl.constexpr, SOFT_RNE: tl.constexpr,
                         PDL: tl.constexpr):
    """BR rows x one 128-group: Q[r, g*128:(g+1)*128] = e4m3(x / s), S[r, g] = s."""
    wait_for_previous_grid(PDL)
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    g = tl.program_id(1)
    offs = g * 128 + tl.arange(0, 128)
    mr = rows < R
    m = mr[:, None] & (offs < K)[None, :]
    r64 = rows.to(tl.int64)
    x = tl.load(X + r64[:, None] * stride_x + offs[None, :], mask=m, other=0.0)
    q, s = quant_rows(x, SOFT_RNE)
    tl.store(Q + r64[:, None] * K + offs[None, :], q, mask=m)
    tl.store(S + r64 * n_groups + g, s, mask=mr)


def quantize_groups(x, soft_rne: bool = False, pdl: bool = False):
    """x [R, K] float -> (q [R, K] float8_e4m3fn, s [R, ceil(K/128)] float32): per-row 128-groups, one pass
    (16 rows x 128 columns per program). Used before the GEMMs at large M, where quantizing inside every
    N-tile program costs more than it saves. pdl: launch as a programmatic dependent (triton_moe.pdl_enabled)."""
    import torch
    R, K = x.shape
    ng = -(-K // 128)
    q = torch.empty(R, K, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(R, ng, dtype=torch.float32, device=x.device)
    if R:
        BR = 16
        _quant_groups_kernel[(triton.cdiv(R, BR), ng)](x, q, s, R, K, x.stride(0), ng, BR=BR, SOFT_RNE=soft_rne,
                                                        PDL=pdl, launch_pdl=pdl)
    return q, s
