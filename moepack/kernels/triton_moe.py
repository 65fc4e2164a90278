"""Triton fused MoE over the moepack Triton layout: `fused_moe(x, topk_weights, topk_ids, stored, meta)`.

Launches (all static shapes, CUDA-graph safe):
  [sort: memset + 3 small kernels (align.py); skipped on the per-pair decode path]
  1. gemm1: inter[p] = act(x[p // k] @ w13[e].T + b13[e])      (MXFP4 / FP8 weights, act + bias fused)
  2. gemm2: y[p]     = w[p] * (inter[p] @ w2[e].T + b2[e])     (routed weight + bias fused)
  3. combine: out[t] = sum_j y[t*k + j] over slots whose expert is on this rank, in x.dtype
Where the config sets `fused` on the per-pair path, 1 and 2 are one persistent launch instead
(`triton_decode.moe_decode`, y kept float32 per K split until the combine).
One kernel body `_moe_gemm` serves both GEMMs and every format; its constexprs pick the weight tile
loader (triton_mxfp4.py, triton_fp8.py; FP8 weight tiles by pointer loads or through a TMA descriptor) and
the epilogue. Where K is one or two 128-groups (fp8_block gemm2 at TP8-like shards), gemm2 can instead run
`_moe_down_resident`, several output tiles per program over rows loaded once (config `n_tiles`).
fp8_block with prequant quantizes x in one pass before gemm1, and gemm2's input either in
gemm1's epilogue (tiles of whole 128-column groups, `fuses_quant`) or in one pass after it. On Hopper,
FP8 layers of M <= 1024 launch with programmatic dependent launch (`pdl_enabled`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..layouts.triton import mma_tiles_fit, mxfp4_k_chunk
from . import configs
from .align import max_blocks, moe_align
from .pdl import wait_for_previous_grid
from .triton_fp8 import (block_scaled_dot, fp8_block_step, fp8_tensor_step, quant_rows, quantize_groups,
                         tile_scale_rows, weight_scale_pair, weight_tile)
from .triton_mxfp4 import mxfp4_scales, mxfp4_step

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Programmatic dependent launch (Hopper and later): each launch of the layer may start while the previous
# one drains, and waits for it inside the kernel (griddepcontrol). None = on where the GPU supports it, for
# FP8 formats at M <= PDL_MAX_M: on the H100 it gained 1-20 us for DeepSeek-V3 FP8 at M = 1..1024 and
# nothing measurable at prefill sizes, and cost gpt-oss MXFP4 ~5 us at M = 1 (54 -> 59 us, alternating
# runs of `benchmarks/kernels.py --pdl on/off`), so MXFP4 launches without it. Benchmarks and tests set
# True/False to force it.
USE_PDL: bool | None = None
PDL_MAX_M = 1024
FMT = {"mxfp4": 0, "fp8_block": 1, "fp8_tensor": 2}
ACT = {"swiglu_oai": 0, "silu": 1, "relu2": 2}


@dataclass(frozen=True)
class MoEMeta:
    """What the kernels need besides the tensors. `activation` is a moepack.formats.model.Activation."""

    quant: str
    activation: object
    gated: bool
    E_l: int
    H: int
    Ip: int
    add_w2_bias: bool = True
    small_scales: bool = False   # mxfp4: every weight scale code <= 128 (triton_mxfp4.small_scales); False is always safe
    # mxfp4: whether (w13, w2) are stored with `triton_fp4_mma_tiles` + `triton_fp4_bf16_bits`; None = what
    # `triton_local_steps` writes today (`mma_tiles_fit`). MoELayer sets it from the manifest's chains.
    fp4_tiles: tuple[bool, bool] | None = None


@triton.jit
def _activate(acc, ACT_KIND: tl.constexpr, GATED: tl.constexpr, alpha, limit, HAS_LIMIT: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr):
    """acc [BM, BN] (gated: columns (gate_j, up_j) interleaved) -> [BM, BN/2] (gated) or [BM, BN]."""
    if GATED:
        gate, up = tl.split(tl.reshape(acc, [BM, BN // 2, 2]))
        if HAS_LIMIT:
            gate = tl.minimum(gate, limit)
            up = tl.minimum(tl.maximum(up, -limit), limit)
        if ACT_KIND == 0:
            return gate * tl.sigmoid(alpha * gate) * (up + 1.0)
        else:
            return gate * tl.sigmoid(gate) * up
    else:
        r = tl.maximum(acc, 0.0)
        return r * r


@triton.jit
def activate_tile(acc, pid_n, offs_n, mask_n, N, ACT_KIND: tl.constexpr, GATED: tl.constexpr, alpha, limit,
                  HAS_LIMIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """gemm1's epilogue after the bias: acc [BM, BN] of output tile pid_n (columns offs_n, mask_n, of N) ->
    (h float32 [BM, BN/2 or BN], its intermediate columns, their mask)."""
    h = _activate(acc, ACT_KIND, GATED, alpha, limit, HAS_LIMIT, BM, BN)
    if GATED:
        offs_o = pid_n * (BN // 2) + tl.arange(0, BN // 2)
        mask_o = offs_o < N // 2
    else:
        offs_o = offs_n
        mask_o = mask_n
    return h, offs_o, mask_o


@triton.jit
def _quantize_tile(h, mask_o, ROUND: tl.constexpr, SOFT_RNE: tl.constexpr, BM: tl.constexpr, BO: tl.constexpr):
    """h [BM, BO] float32 (BO a multiple of 128) -> (q [BM, BO] e4m3, s [BM, BO/128] float32, [BO/128] group
    offsets): h rounded to the activation dtype first, columns outside mask_o count as zeros, then each
    128-group quantized by `triton_fp8.quant_rows`, as the separate pass does."""
    if ROUND == 1:
        h = h.to(tl.bfloat16).to(tl.float32)
    elif ROUND == 2:
        h = h.to(tl.float16).to(tl.float32)
    h = tl.where(mask_o[None, :], h, 0.0)
    q, s = quant_rows(tl.reshape(h, [BM * (BO // 128), 128]), SOFT_RNE)
    return tl.reshape(q, [BM, BO]), tl.reshape(s, [BM, BO // 128]), tl.arange(0, BO // 128)


@triton.jit
def pair_rows(pair, BM: tl.constexpr):
    """The per-pair path's block: BM rows that all name `pair`, of which the first is used -> (rows [BM],
    mask [BM])."""
    return pair + tl.zeros([BM], dtype=tl.int32), tl.arange(0, BM) == 0


@triton.jit
def k_loop(A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
           SCAL, stride_ce, e, pid_n, a_rows, mask_m, N, K, k_lo, k_hi, n_scale_blocks,
           FMT: tl.constexpr, GATED: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
           CH: tl.constexpr, SOFT_RNE: tl.constexpr, BF16_ASM: tl.constexpr, PREQ: tl.constexpr,
           SWAP: tl.constexpr, FOLD: tl.constexpr, TMA: tl.constexpr, TILED: tl.constexpr):
    """The K loop of one output tile: K-steps k0 = k_lo, k_lo + BK, .. < k_hi of expert e's weight rows
    pid_n * BN + [0, BN) (N of them in all) against activation rows a_rows [BM] (mask_m [BM]) -> acc
    float32 [BN, BM] (SWAP) or [BM, BN], before any epilogue. k_lo and k_hi are multiples of BK, or k_hi = K
    (a split of K, `triton_decode`; `_moe_gemm` runs 0..K). GATED: w13 rows are (gate, up) interleaved.
    Arguments as `_moe_gemm`'s."""
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < N
    a_base = A + a_rows.to(tl.int64)[:, None] * stride_am
    a_mask = mask_m[:, None]
    w_base = W + e * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn
    w_row0 = (e * N + pid_n * BN).to(tl.int32)
    if SWAP:
        acc = tl.zeros([BN, BM], dtype=tl.float32)
    else:
        acc = tl.zeros([BM, BN], dtype=tl.float32)
    if FMT == 0:
        s_base = WS + e * stride_se + offs_n[None, :] * stride_s2
        if TILED:
            w_base = W + e * stride_we + (pid_n * BN + 16 * tl.arange(0, BN // 16)).to(tl.int64)[:, None] * stride_wn
        s_lo, s_hi = mxfp4_scales(s_base, stride_s1, mask_n, k_lo, K, BK, CH)
        for k0 in range(k_lo, k_hi, BK):
            s_lo_next, s_hi_next = mxfp4_scales(s_base, stride_s1, mask_n, k0 + BK, K, BK, CH)
            acc = mxfp4_step(acc, a_base, a_mask, w_base, s_lo, s_hi, mask_n, k0, K, BN, BK, CH,
                             BF16_ASM, SWAP, FOLD, TILED)
            s_lo, s_hi = s_lo_next, s_hi_next
    elif FMT == 1:
        row_a, row_b, pick_b = tile_scale_rows(pid_n, n_scale_blocks, BN, GATED)
        n_rows = 2 * n_scale_blocks if GATED else tl.cdiv(N, 128)
        ws_e = WS + e * stride_se
        as_rows = AS + a_rows.to(tl.int64) * stride_asm
        # weight scales: swap-AB puts the weight rows on the accumulator's row axis, where a [BN] load lands
        # as loaded; otherwise two scalars per K-step, loaded one step ahead (`weight_scale_pair`)
        if SWAP:
            ws_rows = ws_e + tl.where(pick_b, row_b, row_a) * stride_s1
        else:
            s_a, s_b = weight_scale_pair(ws_e, row_a, row_b, k_lo, K, n_rows, stride_s1, stride_s2)
        for k0 in range(k_lo, k_hi, BK):
            if SWAP:
                ws = tl.load(ws_rows + (k0 // 128) * stride_s2, mask=mask_n, other=0.0)
                cur_a, cur_b = 0.0, 0.0
            else:
                ws, cur_a, cur_b = 0.0, s_a, s_b
                s_a, s_b = weight_scale_pair(ws_e, row_a, row_b, k0 + BK, K, n_rows, stride_s1, stride_s2)
            acc = fp8_block_step(acc, a_base, a_mask, as_rows, w_base, ws, cur_a, cur_b, pick_b, mask_n, k0, K,
                                 W_DESC, w_row0, BK, SOFT_RNE, PREQ, SWAP, TMA)
    else:
        inv_in = tl.load(SCAL + e * stride_ce + 3)
        for k0 in range(k_lo, k_hi, BK):
            acc = fp8_tensor_step(acc, a_base, a_mask, w_base, inv_in, offs_n, mask_n, k0, K, W_DESC, w_row0, BK,
                                  SOFT_RNE, SWAP, TMA)
    return acc


@triton.jit
def _moe_gemm(
    A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
    BIAS, stride_be, SCAL, stride_ce, OUT, stride_om, OUT_S, stride_osm, TOPK_W,
    SORTED, EXPERT_IDS, NUM_BLOCKS, TOPK_IDS,
    P, N, K, n_scale_blocks, alpha, limit,
    TOPK: tl.constexpr, FMT: tl.constexpr, STAGE: tl.constexpr, ACT_KIND: tl.constexpr, GATED: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_LIMIT: tl.constexpr, PER_PAIR: tl.constexpr, CH: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, SOFT_RNE: tl.constexpr,
    BF16_ASM: tl.constexpr, PREQ: tl.constexpr, SWAP: tl.constexpr, FOLD: tl.constexpr, TMA: tl.constexpr,
    PDL: tl.constexpr, QOUT: tl.constexpr, ROUND: tl.constexpr, TILED: tl.constexpr = False,
    TAIL_DIV: tl.constexpr = 1,
):
    """One [BM, BN] output tile of one GEMM stage for one expert block.

    STAGE 1: A = x [T, K], rows p // TOPK; W = w13 [E, N, .]; OUT = inter [P, N/2 or N].
    STAGE 2: A = inter [P, K], rows p; W = w2 [E, N, .]; OUT = y [P, N], scaled by TOPK_W[p].
    WS strides: (expert, s1, s2) of the scale tensor as stored. SCAL: fp8_tensor scalars [E, 4] =
    (weight scale gate/only, weight scale up, input scale, 1 / input scale).
    SWAP (swap-AB): the K loop accumulates the transposed tile [BN, BM] = W @ A.T, so the weight tile is
    the MMA's left operand (64-row wgmma side, and for MXFP4 taken from registers right after the
    decode) and the tokens its narrow side; one transpose before the epilogue.
    TMA (FP8): weight tiles through W_DESC, a tensor descriptor over W viewed [E * N, K] (N % BN == 0).
    QOUT (STAGE 1, fp8_block): the epilogue writes gemm2's input already quantized, OUT = e4m3 [P, N/2 or N]
    and OUT_S = its per-row 128-group scales, the same bits `quantize_groups` gives for the intermediate
    stored in the activation dtype (ROUND: 1 bfloat16, 2 float16, 0 float32); needs the tile's output
    columns to be whole groups.
    PDL: launched as a programmatic dependent of the previous kernel (pdl.py).
    TAIL_DIV (sorted path, `tail_tiles`): a block whose real pairs fit in BM / d rows (an expert's last block),
    d = 2, 4, .. <= TAIL_DIV, runs a [BM / d, BN] tile for the largest such d: the same arithmetic per row on
    a d-th of the MMA work."""
    wait_for_previous_grid(PDL)
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BN)
    if PER_PAIR:
        pid_m = pid // num_n
        pid_n = pid % num_n
        e = tl.load(TOPK_IDS + pid_m)
        if e < 0:
            return
        rows, mask_m = pair_rows(pid_m, BM)
    else:
        num_m = tl.load(NUM_BLOCKS)
        # grouped order: GROUP_M consecutive blocks share the weight tiles they read
        width = GROUP_M * num_n
        group = pid // width
        first_m = group * GROUP_M
        gsize = tl.minimum(num_m - first_m, GROUP_M)
        if gsize <= 0:
            return
        pid_m = first_m + (pid % width) % gsize
        pid_n = (pid % width) // gsize
        if pid_n >= num_n:
            return
        e = tl.load(EXPERT_IDS + pid_m)
        rows = tl.load(SORTED + pid_m * BM + tl.arange(0, BM))
        mask_m = rows < P
    if PER_PAIR or TAIL_DIV == 1:
        _gemm_tile(A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
                   BIAS, stride_be, SCAL, stride_ce, OUT, stride_om, OUT_S, stride_osm, TOPK_W, e, pid_n, rows, mask_m,
                   N, K, n_scale_blocks, alpha, limit, TOPK, FMT, STAGE, ACT_KIND, GATED, HAS_BIAS, HAS_LIMIT, CH,
                   BM, BN, BK, SOFT_RNE, BF16_ASM, PREQ, SWAP, FOLD, TMA, QOUT, ROUND, TILED)
    else:
        # real pairs come first in a block: the rows past `last` are padding
        last = tl.max(tl.where(mask_m, tl.arange(0, BM) + 1, 0), axis=0)
        _tail_tile(A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
                   BIAS, stride_be, SCAL, stride_ce, OUT, stride_om, OUT_S, stride_osm, TOPK_W, e, pid_n,
                   SORTED + pid_m * BM, P, last,
                   N, K, n_scale_blocks, alpha, limit, TOPK, FMT, STAGE, ACT_KIND, GATED, HAS_BIAS, HAS_LIMIT, CH,
                   BM, BN, BK, SOFT_RNE, BF16_ASM, PREQ, SWAP, FOLD, TMA, QOUT, ROUND, TILED, TAIL_DIV)


@triton.jit
def _tail_tile(A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
               BIAS, stride_be, SCAL, stride_ce, OUT, stride_om, OUT_S, stride_osm, TOPK_W, e, pid_n, slots, P, last,
               N, K, n_scale_blocks, alpha, limit,
               TOPK: tl.constexpr, FMT: tl.constexpr, STAGE: tl.constexpr, ACT_KIND: tl.constexpr,
               GATED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LIMIT: tl.constexpr, CH: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SOFT_RNE: tl.constexpr,
               BF16_ASM: tl.constexpr, PREQ: tl.constexpr, SWAP: tl.constexpr, FOLD: tl.constexpr,
               TMA: tl.constexpr, QOUT: tl.constexpr, ROUND: tl.constexpr, TILED: tl.constexpr, DIV: tl.constexpr):
    """`_gemm_tile` over the block at `slots` whose real pairs are its first `last` slots, on a tile of BM / d
    rows for the largest d <= DIV (powers of 2) with last <= BM / d."""
    if DIV > 1:
        # (one call per branch with constexpr arguments: Triton compiles each specialisation once)
        if last <= BM // 2:
            _tail_tile(A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1,
                       stride_s2, BIAS, stride_be, SCAL, stride_ce, OUT, stride_om, OUT_S, stride_osm, TOPK_W, e,
                       pid_n, slots, P, last, N, K, n_scale_blocks, alpha, limit, TOPK, FMT, STAGE, ACT_KIND, GATED,
                       HAS_BIAS, HAS_LIMIT, CH, BM // 2, BN, BK, SOFT_RNE, BF16_ASM, PREQ, SWAP, FOLD, TMA, QOUT,
                       ROUND, TILED, DIV // 2)
        else:   # the whole tile: DIV 1
            _tail_tile(A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1,
                       stride_s2, BIAS, stride_be, SCAL, stride_ce, OUT, stride_om, OUT_S, stride_osm, TOPK_W, e,
                       pid_n, slots, P, last, N, K, n_scale_blocks, alpha, limit, TOPK, FMT, STAGE, ACT_KIND, GATED,
                       HAS_BIAS, HAS_LIMIT, CH, BM, BN, BK, SOFT_RNE, BF16_ASM, PREQ, SWAP, FOLD, TMA, QOUT,
                       ROUND, TILED, 1)
    else:
        rows = tl.load(slots + tl.arange(0, BM))
        _gemm_tile(A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
                   BIAS, stride_be, SCAL, stride_ce, OUT, stride_om, OUT_S, stride_osm, TOPK_W, e, pid_n,
                   rows, rows < P, N, K, n_scale_blocks, alpha, limit, TOPK, FMT, STAGE, ACT_KIND, GATED, HAS_BIAS,
                   HAS_LIMIT, CH, BM, BN, BK, SOFT_RNE, BF16_ASM, PREQ, SWAP, FOLD, TMA, QOUT, ROUND, TILED)


@triton.jit
def _gemm_tile(A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
               BIAS, stride_be, SCAL, stride_ce, OUT, stride_om, OUT_S, stride_osm, TOPK_W, e, pid_n, rows, mask_m,
               N, K, n_scale_blocks, alpha, limit,
               TOPK: tl.constexpr, FMT: tl.constexpr, STAGE: tl.constexpr, ACT_KIND: tl.constexpr,
               GATED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LIMIT: tl.constexpr, CH: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SOFT_RNE: tl.constexpr,
               BF16_ASM: tl.constexpr, PREQ: tl.constexpr, SWAP: tl.constexpr, FOLD: tl.constexpr,
               TMA: tl.constexpr, QOUT: tl.constexpr, ROUND: tl.constexpr, TILED: tl.constexpr):
    """`_moe_gemm`'s work once its block is known: expert e's output tile pid_n for the BM slots rows (pair
    ids, mask_m = real pairs): the K loop and the epilogue. Arguments as `_moe_gemm`'s."""
    e = e.to(tl.int64)
    if STAGE == 1:
        a_rows = rows // TOPK
    else:
        a_rows = rows
    acc = k_loop(A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
                 SCAL, stride_ce, e, pid_n, a_rows, mask_m, N, K, 0, K, n_scale_blocks,
                 FMT, GATED, BM, BN, BK, CH, SOFT_RNE, BF16_ASM, PREQ, SWAP, FOLD, TMA, TILED)
    offs_n = pid_n * BN + tl.arange(0, BN)
    mask_n = offs_n < N
    if SWAP:
        acc = tl.trans(acc)
    if FMT == 2:
        in_scale = tl.load(SCAL + e * stride_ce + 2)
        s_gate = tl.load(SCAL + e * stride_ce)
        if STAGE == 1 and GATED:
            s_up = tl.load(SCAL + e * stride_ce + 1)
            col_scale = tl.where(offs_n % 2 == 0, s_gate, s_up) * in_scale
        else:
            col_scale = s_gate * in_scale + tl.zeros([BN], dtype=tl.float32)
        acc = acc * col_scale[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + e * stride_be + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if STAGE == 1:
        h, offs_o, mask_o = activate_tile(acc, pid_n, offs_n, mask_n, N, ACT_KIND, GATED, alpha, limit, HAS_LIMIT,
                                          BM, BN)
        o_ptrs = OUT + rows.to(tl.int64)[:, None] * stride_om + offs_o[None, :]
        if QOUT:
            q, s, g = _quantize_tile(h, mask_o, ROUND, SOFT_RNE, BM, offs_o.shape[0])
            tl.store(o_ptrs, q, mask=mask_m[:, None] & mask_o[None, :])
            g = pid_n * g.shape[0] + g
            tl.store(OUT_S + rows.to(tl.int64)[:, None] * stride_osm + g[None, :], s,
                     mask=mask_m[:, None] & (g < n_scale_blocks)[None, :])
        else:
            tl.store(o_ptrs, h.to(OUT.dtype.element_ty), mask=mask_m[:, None] & mask_o[None, :])
    else:
        _store_down(acc, tl.load(TOPK_W + rows, mask=mask_m, other=0.0), OUT, stride_om, rows, mask_m, offs_n, mask_n)


@triton.jit
def _store_down(acc, wt, OUT, stride_om, rows, mask_m, offs_n, mask_n):
    """gemm2's epilogue: y[rows, offs_n] = acc [BM, BN] float32 * wt [BM] (each row's routed weight), in
    OUT's dtype."""
    o_ptrs = OUT + rows.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
    tl.store(o_ptrs, (acc * wt[:, None]).to(OUT.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _moe_down_resident(
    A, stride_am, AS, stride_asm, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
    BIAS, stride_be, OUT, stride_om, TOPK_W, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, K,
    BM: tl.constexpr, BN: tl.constexpr, NT: tl.constexpr, KSTEPS: tl.constexpr, SWAP: tl.constexpr,
    TMA: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
):
    """gemm2 of fp8_block with prequant where K (the rank's intermediate size) <= 256: NT consecutive
    [BM, BN] tiles of y for one expert block per program.

    The block's quantized rows A [BM, K] e4m3 (KSTEPS = ceil(K / 128) <= 2 groups) and their scales
    AS [BM, KSTEPS] are loaded once and held; the loop over the NT tiles is software-pipelined, so the next
    weight tile W[e, n:n+BN, :K] streams in during this tile's MMA and epilogue, and the route lookups are
    paid once per NT tiles. With K = 256 a one-tile program (`_moe_gemm`) is two K-steps long, mostly
    prologue and epilogue. Same arithmetic in the same order as `_moe_gemm` STAGE 2, so the same bits.
    Grid: max blocks x ceil(ceil(N / BN) / NT)."""
    wait_for_previous_grid(PDL)
    pid = tl.program_id(0)
    n_split = tl.cdiv(tl.cdiv(N, BN), NT)
    pid_m = pid // n_split
    first_n = (pid % n_split) * NT
    if pid_m >= tl.load(NUM_BLOCKS):
        return
    e = tl.load(EXPERT_IDS + pid_m).to(tl.int64)
    rows = tl.load(SORTED + pid_m * BM + tl.arange(0, BM))
    mask_m = rows < P
    r64 = rows.to(tl.int64)
    offs_k = tl.arange(0, 128)
    a_ptrs = A + r64[:, None] * stride_am + offs_k[None, :]
    a0 = tl.load(a_ptrs, mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
    sa0 = tl.load(AS + r64 * stride_asm, mask=mask_m, other=0.0)
    if KSTEPS == 2:
        a1 = tl.load(a_ptrs + 128, mask=mask_m[:, None] & (offs_k + 128 < K)[None, :], other=0.0)
        sa1 = tl.load(AS + r64 * stride_asm + 1, mask=mask_m, other=0.0)
    wt = tl.load(TOPK_W + rows, mask=mask_m, other=0.0)
    ws_e = WS + e * stride_se
    n_rows = tl.cdiv(N, 128)
    # the weight scales of each tile's two K-steps, loaded one tile ahead (pick_b is the same for every tile)
    row_a, row_b, pick_b = tile_scale_rows(first_n, 0, BN, False)
    s0a, s0b = weight_scale_pair(ws_e, row_a, row_b, 0, K, n_rows, stride_s1, stride_s2)
    if KSTEPS == 2:
        s1a, s1b = weight_scale_pair(ws_e, row_a, row_b, 128, K, n_rows, stride_s1, stride_s2)
    for j in range(NT):
        pid_n = first_n + j
        offs_n = pid_n * BN + tl.arange(0, BN)
        mask_n = offs_n < N
        w_base = W + e * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn
        w_row0 = (e * N + pid_n * BN).to(tl.int32)
        nxt_a, nxt_b, _ = tile_scale_rows(pid_n + 1, 0, BN, False)
        s0a_next, s0b_next = weight_scale_pair(ws_e, nxt_a, nxt_b, 0, K, n_rows, stride_s1, stride_s2)
        if KSTEPS == 2:
            s1a_next, s1b_next = weight_scale_pair(ws_e, nxt_a, nxt_b, 128, K, n_rows, stride_s1, stride_s2)
        w0 = weight_tile(w_base, mask_n, offs_k, offs_k < K, W_DESC, w_row0, 0, TMA)
        acc = block_scaled_dot(a0, sa0, w0, tl.where(pick_b, s0b, s0a), s0a, s0b, pick_b, SWAP)
        s0a, s0b = s0a_next, s0b_next
        if KSTEPS == 2:
            w1 = weight_tile(w_base, mask_n, offs_k + 128, offs_k + 128 < K, W_DESC, w_row0, 128, TMA)
            acc = acc + block_scaled_dot(a1, sa1, w1, tl.where(pick_b, s1b, s1a), s1a, s1b, pick_b, SWAP)
            s1a, s1b = s1a_next, s1b_next
        if SWAP:
            acc = tl.trans(acc)
        if HAS_BIAS:
            acc += tl.load(BIAS + e * stride_be + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        _store_down(acc, wt, OUT, stride_om, rows, mask_m, offs_n, mask_n)


@triton.jit
def _combine(Y, IDS, OUT, H, P, TOPK: tl.constexpr, BH: tl.constexpr, PDL: tl.constexpr, S: tl.constexpr = 1):
    """out[t, :] = sum_j sum_s y[s, t*TOPK + j, :] over slots j with ids[t, j] >= 0 and the S splits of K
    (y [S, P, H]; S = 1 but for `triton_decode`)."""
    wait_for_previous_grid(PDL)
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BH + tl.arange(0, BH)
    m = offs < H
    acc = tl.zeros([BH], dtype=tl.float32)
    for j in tl.static_range(TOPK):
        ok = tl.load(IDS + t * TOPK + j + offs * 0, mask=m, other=-1) >= 0
        for s in tl.static_range(S):
            acc += tl.load(Y + (s * P + t * TOPK + j) * H + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(OUT + t * H + offs, acc.to(OUT.dtype.element_ty), mask=m)


def _scalars(stored: dict, E: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """fp8_tensor: per-expert [E, 4] float32 (w scale gate, w scale up, in scale, 1/in scale) for each GEMM."""
    s13 = stored["w13_weight_scale"].float().reshape(E, -1)
    in13 = stored["w13_input_scale"].float().reshape(E, -1).amax(dim=1)
    s2 = stored["w2_weight_scale"].float().reshape(E, -1)[:, 0]
    in2 = stored["w2_input_scale"].float().reshape(E, -1).amax(dim=1)
    sc1 = torch.stack([s13[:, 0], s13[:, -1], in13, 1.0 / in13], dim=1).contiguous().to(device)
    sc2 = torch.stack([s2, s2, in2, 1.0 / in2], dim=1).contiguous().to(device)
    return sc1, sc2


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    if t is None or t.dim() < 2:
        return 0, 0, 0
    if t.dim() == 2:
        return t.stride(0), t.stride(1), 0
    return t.stride(0), t.stride(1), t.stride(2)


def _weight_args(W, desc, WS, bias, dummy) -> tuple:
    """A GEMM kernel's weight arguments (W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
    BIAS, stride_be), `dummy` standing in for an absent tensor and W for an absent descriptor."""
    return (W, desc if desc is not None else W, W.stride(0), W.stride(1), WS if WS is not None else dummy,
            *_strides3(WS), bias if bias is not None else dummy, bias.stride(0) if bias is not None else 0)


def _act_scalars(act) -> tuple[float, float]:
    """(alpha, limit) of an Activation as the kernels take them (1.0 / 0.0 where unset)."""
    return float(act.alpha if act.alpha is not None else 1.0), float(act.limit if act.limit is not None else 0.0)


def pdl_enabled(device: torch.device, M: int = 1, quant: str = "fp8_block") -> bool:
    """Whether a layer of M tokens in format `quant` launches its kernels with programmatic dependent
    launch on `device`."""
    if _INTERPRETED or device.type != "cuda" or torch.version.hip:
        return False
    if torch.cuda.get_device_capability(device)[0] < 9:
        return False
    return USE_PDL if USE_PDL is not None else (M <= PDL_MAX_M and quant != "mxfp4")


def weight_descriptor(W: torch.Tensor, N: int, K: int, block_n: int, block_k: int):
    """A TMA tensor descriptor over W [E, N, K] (1-byte elements, contiguous) viewed [E * N, K] with
    [block_n, block_k] boxes, or None where TMA cannot serve this tensor (then the kernel uses pointer
    loads; same result): N not a multiple of block_n (a box would cross into the next expert), rows not
    16-byte aligned, or more than 2^31 rows."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    E = W.shape[0]
    ok = (W.dim() == 3 and W.element_size() == 1 and W.is_contiguous() and tuple(W.shape[1:]) == (N, K)
          and N % block_n == 0 and K % 16 == 0 and W.data_ptr() % 16 == 0 and E * N < 2 ** 31)
    if not ok:
        return None
    return TensorDescriptor(W.view(E * N, K), [E * N, K], [K, 1], [block_n, block_k])


def fp4_tiled(meta: MoEMeta, stage: int, N: int, K: int) -> bool:
    """Whether stage `stage`'s MXFP4 weight [E, N, K/2] is stored in `triton_fp4_mma_tiles` order."""
    if meta.quant != "mxfp4":
        return False
    tiled = mma_tiles_fit(N, K) if meta.fp4_tiles is None else meta.fp4_tiles[stage - 1]
    if tiled and not mma_tiles_fit(N, K):
        raise ValueError(f"gemm{stage}: fp4_mma_tiles needs N % 16 == 0 and K % 64 == 0, got N={N}, K={K}")
    return tiled


def _launch_gemm(stage, A, W, WS, bias, scal, out, topk_w, route, P, N, K, meta, cfg, gcfg, topk, pdl, A_scale=None,
                 out_scale=None, round_code=0):
    sorted_ids, expert_ids, num_blocks, topk_ids, grid_m = route
    if stage == 2 and bias is None and ws_down_applies(meta, cfg, gcfg, W, N, K):
        from .gluon_fp8 import moe_down_ws
        moe_down_ws(A, A_scale, W, WS, out, topk_w, sorted_ids, expert_ids, num_blocks, grid_m, P, N, K,
                    stages=gcfg.num_stages, group_m=cfg.group_m, persistent=gcfg.persistent)
        return
    if stage == 1 and bias is None and out_scale is not None and ws_up_applies(meta, cfg, gcfg, W, N, K):
        from .gluon_fp8 import moe_up_ws
        moe_up_ws(A, A_scale, W, WS, out, out_scale, sorted_ids, expert_ids, num_blocks, grid_m, P, N, K, topk,
                  round_code, stages=gcfg.num_stages, group_m=cfg.group_m, persistent=gcfg.persistent)
        return
    act = meta.activation
    if ws_mxfp4_applies(meta, cfg, gcfg, stage, A, W, WS, N, K):
        from .gluon_mxfp4 import moe_mxfp4_ws
        moe_mxfp4_ws(stage, A, W, WS, bias, out, topk_w, sorted_ids, expert_ids, num_blocks, grid_m, P, N, K, topk,
                     ACT[act.kind], act.alpha if act.alpha is not None else 1.0, act.limit if stage == 1 else None,
                     meta.small_scales, stages=gcfg.num_stages, group_m=cfg.group_m, persistent=gcfg.persistent)
        return
    fmt = FMT[meta.quant]
    ch = mxfp4_k_chunk(K) if fmt == 0 else 0
    bk = 128 if fmt == 1 else gcfg.block_k
    dummy = out
    desc = weight_descriptor(W, N, K, gcfg.block_n, bk) if gcfg.tma and fmt != 0 else None
    if stage == 2 and resident_down(meta, cfg, gcfg, K):
        grid = (grid_m * triton.cdiv(triton.cdiv(N, gcfg.block_n), gcfg.n_tiles),)
        _moe_down_resident[grid](
            A, A.stride(0), A_scale, A_scale.stride(0), *_weight_args(W, desc, WS, bias, dummy), out, out.stride(0), topk_w, sorted_ids, expert_ids, num_blocks, P, N, K,
            BM=cfg.block_m, BN=gcfg.block_n, NT=gcfg.n_tiles, KSTEPS=triton.cdiv(K, 128), SWAP=gcfg.swap_ab,
            TMA=desc is not None, HAS_BIAS=bias is not None, PDL=pdl,
            num_warps=gcfg.num_warps, num_stages=gcfg.num_stages, launch_pdl=pdl,
        )
        return
    grid = (grid_m * triton.cdiv(N, gcfg.block_n),)
    _moe_gemm[grid](
        A, A.stride(0), A_scale if A_scale is not None else dummy, A_scale.stride(0) if A_scale is not None else 0,
        *_weight_args(W, desc, WS if fmt != 2 else None, bias, dummy),
        scal if scal is not None else dummy, scal.stride(0) if scal is not None else 0,
        out, out.stride(0), out_scale if out_scale is not None else dummy,
        out_scale.stride(0) if out_scale is not None else 0, topk_w,
        sorted_ids, expert_ids, num_blocks, topk_ids,
        P, N, K, -(-meta.Ip // 128), *_act_scalars(act),
        TOPK=topk, FMT=fmt, STAGE=stage, ACT_KIND=ACT[act.kind], GATED=meta.gated and stage == 1,
        HAS_BIAS=bias is not None, HAS_LIMIT=act.limit is not None and stage == 1, PER_PAIR=cfg.per_pair, CH=ch,
        BM=cfg.block_m, BN=gcfg.block_n, BK=bk, GROUP_M=cfg.group_m, SOFT_RNE=_INTERPRETED,
        BF16_ASM=A.dtype == torch.bfloat16 and not _INTERPRETED, PREQ=A_scale is not None, SWAP=gcfg.swap_ab,
        FOLD=meta.small_scales and fmt == 0, TMA=desc is not None, PDL=pdl, QOUT=out_scale is not None,
        ROUND=round_code, TILED=fp4_tiled(meta, stage, N, K), TAIL_DIV=tail_tiles(cfg, gcfg),
        num_warps=gcfg.num_warps, num_stages=gcfg.num_stages, launch_pdl=pdl,
    )


def tail_tiles(cfg: configs.MoEConfig, gcfg: configs.GemmConfig) -> int:
    """The largest d (1, 2, 4, .. <= `gcfg.tail_div`) for which `_moe_gemm` runs a block whose real pairs fit
    in block_m / d rows (an expert's last block) as a block_m / d-row tile. Only on the sorted path and only
    where the small tile keeps the whole tile's MMA instruction, so the bits stay the same: swap-AB tiles put
    the tokens on wgmma's N side (any multiple of 8; Triton's dot wants >= 16 rows); plain tiles need
    block_m / d >= 64, a warpgroup's wgmma M (below it Triton takes mma.sync: other bits, and slower on the
    H100 for DeepSeek-V3 TP1 gemm2 at M = 4096). Programs of 4 warps stop at halves: gpt-oss gemm2's quarter
    tile (128 x 32 of a block_m 128, 4-warp program) gave NaNs in some launches on the H100 (a race in the
    compiled kernel, not understood; halves and 8-warp quarters gave the whole tiles' bits in every launch,
    docs/KERNEL_NOTES.md v19)."""
    if cfg.per_pair:
        return 1
    d, floor = 1, 16 if gcfg.swap_ab else 64
    top = min(gcfg.tail_div, 2) if gcfg.num_warps <= 4 else gcfg.tail_div
    while 2 * d <= top and cfg.block_m // (2 * d) >= floor:
        d *= 2
    return d


def decode_applies(meta: MoEMeta, cfg: configs.MoEConfig) -> bool:
    """Whether the layer runs `triton_decode.moe_decode` (one launch for both GEMMs): the config asks for it
    (`cfg.fused` programs per multiprocessor) on the per-pair path, for mxfp4 or fp8_block without prequant."""
    return cfg.fused > 0 and cfg.per_pair and meta.quant in ("mxfp4", "fp8_block") and not cfg.prequant


def resident_down(meta: MoEMeta, cfg: configs.MoEConfig, gcfg: configs.GemmConfig, K: int) -> bool:
    """Whether gemm2 (K = the rank's intermediate size) runs `_moe_down_resident`: the config asks for more
    than one output tile per program (`gcfg.n_tiles`), fp8_block with prequant on the sorted path, K <= 256.
    Elsewhere gemm2 is `_moe_gemm`, one tile per program."""
    return gcfg.n_tiles > 1 and prequantizes(meta, cfg) and not cfg.per_pair and K <= 256


def ws_down_applies(meta: MoEMeta, cfg: configs.MoEConfig, gcfg: configs.GemmConfig, W: torch.Tensor, N: int,
                    K: int) -> bool:
    """Whether gemm2 runs the Hopper warp-specialised Gluon kernel (`gluon_fp8.moe_down_ws`): the config asks
    for it (`gcfg.ws`), no w2 bias (checked by the caller), fp8_block with prequant on the sorted path with
    block_m 64, K % 128 == 0, N % 256 == 0, W [E, N, K] contiguous, on a compute capability 9.0 GPU with a
    Triton that has Gluon.
    Elsewhere `_moe_gemm` runs the same config (block_n, stages, warps): the same bits."""
    if not (gcfg.ws and prequantizes(meta, cfg) and not cfg.per_pair and not gcfg.swap_ab and cfg.block_m == 64
            and K % 128 == 0 and N % 256 == 0 and W.dim() == 3 and W.is_contiguous() and not _INTERPRETED):
        return False
    try:
        from . import gluon_fp8
    except ImportError:  # a Triton without Gluon
        return False
    return gluon_fp8.supported(W.device)


def ws_up_applies(meta: MoEMeta, cfg: configs.MoEConfig, gcfg: configs.GemmConfig, W: torch.Tensor, N: int,
                  K: int) -> bool:
    """Whether gemm1 runs the Hopper warp-specialised Gluon kernel (`gluon_fp8.moe_up_ws`): as
    `ws_down_applies`, and the layer is silu-gated (no clamp), no w13 bias (checked by the caller), with
    256-column tiles that quantize gemm2's input in their epilogue (`fuses_quant`).
    Elsewhere `_moe_gemm` runs the same config: the same bits."""
    act = meta.activation
    return (meta.gated and act.kind == "silu" and act.limit is None and gcfg.block_n == 256
            and fuses_quant(meta, cfg) and ws_down_applies(meta, cfg, gcfg, W, N, K))


def ws_mxfp4_applies(meta: MoEMeta, cfg: configs.MoEConfig, gcfg: configs.GemmConfig, stage: int, A: torch.Tensor,
                     W: torch.Tensor, WS: torch.Tensor, N: int, K: int) -> bool:
    """Whether an MXFP4 GEMM runs the Hopper warp-specialised Gluon kernel (`gluon_mxfp4.moe_mxfp4_ws`): the
    config asks for it (`gcfg.ws`) with the tile that kernel computes (sorted path, block_m 128, swap-AB,
    block_n 128, block_k 64), the weight is stored in `triton_fp4_mma_tiles` order with 64-element chunks,
    gemm1 is gated (swiglu_oai or silu), bf16 activations, on a compute capability 9.0 GPU with a Triton that
    has Gluon (`gluon_mxfp4.supports`). Elsewhere `_moe_gemm` runs the same config: the same bits."""
    act = meta.activation
    if not (gcfg.ws and meta.quant == "mxfp4" and not cfg.per_pair and cfg.block_m == 128 and gcfg.swap_ab
            and gcfg.block_n == 128 and gcfg.block_k == 64 and not _INTERPRETED and K % 64 == 0
            and (stage == 2 or (meta.gated and act.kind in ("swiglu_oai", "silu")))
            and fp4_tiled(meta, stage, N, K)):
        return False
    try:
        from . import gluon_mxfp4
    except ImportError:  # a Triton without Gluon
        return False
    return gluon_mxfp4.supports(A, W, WS, N, K)


ROUND_CODE = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 0}


def prequantizes(meta: MoEMeta, cfg: configs.MoEConfig) -> bool:
    """Whether each GEMM's activations are quantized before it (fp8_block with `cfg.prequant`)."""
    return meta.quant == "fp8_block" and cfg.prequant


def fuses_quant(meta: MoEMeta, cfg: configs.MoEConfig) -> bool:
    """Whether gemm1 writes gemm2's quantized input itself (`prequantizes`, and each gemm1 tile's output
    columns are whole 128-groups: block_n / 2 gated, block_n otherwise, a multiple of 128)."""
    if not prequantizes(meta, cfg):
        return False
    return (cfg.gemm1.block_n // 2 if meta.gated else cfg.gemm1.block_n) % 128 == 0


def stage1(x, a1, a1s, stored, sc1, tw, route, meta, cfg, topk, pdl):
    """gemm1 and, with prequant, the quantization of its output: -> (gemm2's input, its group scales or
    None). Fused into gemm1's epilogue where `fuses_quant`, else a `quantize_groups` pass over the
    intermediate stored in x.dtype (the same bits either way)."""
    P, Ip = route[3].numel(), meta.Ip
    n1 = 2 * Ip if meta.gated else Ip
    args = (stored["w13_weight"], stored.get("w13_weight_scale"), stored.get("w13_bias"), sc1)
    if fuses_quant(meta, cfg):
        a2 = torch.empty(P, Ip, dtype=torch.float8_e4m3fn, device=x.device)
        a2s = torch.empty(P, -(-Ip // 128), dtype=torch.float32, device=x.device)
        _launch_gemm(1, a1, *args, a2, tw, route, P, n1, meta.H, meta, cfg, cfg.gemm1, topk, pdl, a1s,
                     out_scale=a2s, round_code=ROUND_CODE[x.dtype])
        return a2, a2s
    inter = torch.empty(P, Ip, dtype=x.dtype, device=x.device)
    _launch_gemm(1, a1, *args, inter, tw, route, P, n1, meta.H, meta, cfg, cfg.gemm1, topk, pdl, a1s)
    if prequantizes(meta, cfg):
        return quantize_groups(inter, _INTERPRETED, pdl)
    return inter, None


def fused_moe(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, stored: dict, meta,
              config: configs.MoEConfig | None = None) -> torch.Tensor:
    """x [T, H] (bf16/fp16/fp32), topk_weights [T, k] float32, topk_ids [T, k] int32 local ids (-1 = skip),
    stored: role -> tensor in the moepack Triton layout, meta: `MoEMeta` (or a dict of its fields)
    -> [T, H] in x.dtype: this rank's sum over its experts."""
    if isinstance(meta, dict):
        meta = MoEMeta(**meta)
    T, H = x.shape
    topk = topk_ids.shape[1]
    P = T * topk
    E, Ip = meta.E_l, meta.Ip
    cfg = config or configs.pick(meta.quant, T, E, topk, H, Ip)
    pdl = pdl_enabled(x.device, T, meta.quant)
    ids = topk_ids.reshape(-1).to(torch.int32).contiguous()
    tw = topk_weights.reshape(-1).to(torch.float32).contiguous()
    x = x.contiguous()
    if cfg.per_pair:
        route = (ids, ids, ids, ids, P)
    else:
        sorted_ids, expert_ids, num_blocks = moe_align(ids.view(T, topk), E, cfg.block_m, pdl)
        route = (sorted_ids, expert_ids, num_blocks, ids, max_blocks(P, E, cfg.block_m))
    sc1 = sc2 = None
    if meta.quant == "fp8_tensor":
        sc1, sc2 = _scalars(stored, E, x.device)
    out = torch.empty_like(x)
    BH = 1024
    if decode_applies(meta, cfg):
        from .triton_decode import moe_decode   # (it imports this module)
        y_parts = moe_decode(x, ids, tw, stored, meta, cfg, topk)
        _combine[(T, triton.cdiv(H, BH))](y_parts, ids, out, H, P, TOPK=topk, BH=BH, PDL=False,
                                          S=y_parts.shape[0])
        return out
    w2_bias = stored.get("w2_bias") if meta.add_w2_bias else None
    a1, a1s = quantize_groups(x, _INTERPRETED, pdl) if prequantizes(meta, cfg) else (x, None)
    a2, a2s = stage1(x, a1, a1s, stored, sc1, tw, route, meta, cfg, topk, pdl)
    y = torch.empty(P, H, dtype=x.dtype, device=x.device)
    _launch_gemm(2, a2, stored["w2_weight"], stored.get("w2_weight_scale"), w2_bias, sc2,
                 y, tw, route, P, H, Ip, meta, cfg, cfg.gemm2, topk, pdl, a2s)
    _combine[(T, triton.cdiv(H, BH))](y, ids, out, H, P, TOPK=topk, BH=BH, PDL=pdl, launch_pdl=pdl)
    return out
