"""Hopper (sm_90) warp-specialised MXFP4 (w4a16, bf16 activations) gemm1 and gemm2, written in Gluon.

Reads the moepack Triton layout with `triton_fp4_mma_tiles` + `triton_fp4_bf16_bits` (moepack/layouts/triton.py)
and 64-element nibble-split chunks (K % 64 == 0): each 16-row group's K-step of 64 elements is one 512-byte tile
whose 16 bytes per lane are, after the bit decode, that lane's registers of the wgmma A operand.

gemm1 (STAGE 1): h[p, j] = act(x[p // topk] @ w13[e].T + b13[e])     (w13 rows (2j, 2j+1) = (gate_j, up_j))
gemm2 (STAGE 2): y[p, n] = w[p] * (inter[p] @ w2[e].T + b2[e])

A tile = [2 x 64 stored weight rows, BM = 128 routed pairs] (swap-AB: the decoded weights are the wgmma's
64-row register operand, the pairs its N side), run by three warp partitions that never meet at a CTA-wide
barrier:
  - a loader (4 warps): each K-step, the block's 128 activation rows (gathered by the routing sort: Hopper TMA
    cannot) as two [128, 32] halves (the chunk's low- and high-nibble K offsets), the tile's packed weight
    tiles and its two rows of e8m0 scale codes, all by cp.async into a ring of STAGES slots (`full` / `empty`
    mbarrier pair per slot);
  - two consumers (one warpgroup each, 64 weight rows): decode the slot's 16 bytes per lane to scaled bf16
    in registers (`triton_mxfp4`'s PTX; the tiled layout is the A operand's register layout, so the layout
    conversion is free), issue the step's two register-operand wgmmas, read the next slot's bytes and scale
    codes out of shared memory while they run, then wait for them and release the slot. One consumer's decode
    overlaps the other's products; its own does not (see below). The epilogue (bias, activation or routed
    weight) runs per warpgroup.

Status (docs/KERNEL_NOTES.md v17): same bits as Triton, but slower on the H100 (gpt-oss gemm1 at M = 16384:
~5.1-5.7 ms against 4.1 ms for `_moe_gemm` with the same tile, benchmarks/kernels-sweep-h100-2026-11-24-s11-
gptoss-ws.json), so the tuned table does not use it; the sweep offers it (config `ws` on an MXFP4 GEMM). The
Triton kernel runs two 8-warp programs per multiprocessor, four warpgroups sharing the tensor cores; this one
runs one program of two consumers (168 registers x 384 threads). Keeping a step's products in flight while the
same warpgroup decodes the next one (wait for <= 2 groups) makes ptxas serialise every wgmma with the
partitions' register reallocation below (C7512); with equal register counts it compiles pipelined but ran
slower still and rewrites in-flight A registers, so this kernel waits for each step.
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from .gluon_fp8 import _check_stages, _grid, _tile, supported
from .triton_mxfp4 import _BITS_ASM, _BITS_FOLD_ASM, _UNTILE

BLOCK_M = 128    # routed pairs per tile = the routing sort's block_m
ROWS = 64        # stored weight rows per consumer warpgroup
BM = gl.constexpr(BLOCK_M)
WM = gl.constexpr(ROWS)
LOADER_WARPS = 4


@gluon.jit
def _loader(A, stride_am, W, stride_we, WS, stride_se, stride_s1, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, K,
            a_lo, a_hi, w_s, s_lo, s_hi, full, empty, nk, STAGE: gl.constexpr, TOPK: gl.constexpr, BN: gl.constexpr,
            STAGES: gl.constexpr, GROUP_M: gl.constexpr, LOADER_WARPS: gl.constexpr):
    """For each of the program's tiles, fill ring slot c % STAGES with its K-step kk (c counts the program's
    steps over its tiles) once every consumer released it: the block's activation columns kk*64 .. +32 (a_lo)
    and +32 .. +64 (a_hi) of rows p // TOPK (STAGE 1) or p (STAGE 2), pairs past P as zeros; the tile's BN/16
    weight tiles (512 contiguous bytes each); its scale codes of K groups 2kk and 2kk + 1. Each thread arrives
    on `full` when its copies land."""
    a_blk: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [LOADER_WARPS, 1], [1, 0])
    w_blk: gl.constexpr = gl.BlockedLayout([1, 16], [1, 32], [LOADER_WARPS, 1], [1, 0])
    s_blk: gl.constexpr = gl.BlockedLayout([16], [32], [LOADER_WARPS], [0])
    cols = gl.arange(0, 32, layout=gl.SliceLayout(0, a_blk))
    grp = gl.arange(0, BN // 16, layout=gl.SliceLayout(1, w_blk))
    byt = gl.arange(0, 512, layout=gl.SliceLayout(0, w_blk))
    scol = gl.arange(0, BN, layout=s_blk)
    c = 0
    num_m = gl.load(NUM_BLOCKS)
    num_n = N // BN
    for t in range(gl.program_id(0), num_m * num_n, gl.num_programs(0)):
        pid_m, pid_n = _tile(t, num_m, num_n, GROUP_M)
        rows = gl.load(SORTED + pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, a_blk)))
        mask = gl.expand_dims(rows < P, 1)
        if STAGE == 1:
            a_rows = rows // TOPK
        else:
            a_rows = rows
        a_ptrs = A + gl.expand_dims(a_rows.to(gl.int64) * stride_am, 1) + gl.expand_dims(cols, 0)
        e = gl.load(EXPERT_IDS + pid_m).to(gl.int64)
        n0 = pid_n * BN
        w_ptrs = (W + e * stride_we + gl.expand_dims((n0 + 16 * grp).to(gl.int64) * (K // 2), 1)
                  + gl.expand_dims(byt, 0))
        s_ptrs = WS + e * stride_se + n0 + scol
        for kk in range(nk):
            slot = c % STAGES
            mbarrier.wait(empty.index(slot), ((c // STAGES) & 1) ^ 1, pred=c >= STAGES)
            async_copy.async_copy_global_to_shared(a_lo.index(slot), a_ptrs + kk * 64, mask=mask)
            async_copy.async_copy_global_to_shared(a_hi.index(slot), a_ptrs + (kk * 64 + 32), mask=mask)
            async_copy.async_copy_global_to_shared(w_s.index(slot), w_ptrs + kk * 512)
            async_copy.async_copy_global_to_shared(s_lo.index(slot), s_ptrs + (2 * kk) * stride_s1)
            async_copy.async_copy_global_to_shared(s_hi.index(slot), s_ptrs + (2 * kk + 1) * stride_s1)
            async_copy.mbarrier_arrive(full.index(slot), increment_count=False)
            c += 1


@gluon.jit
def _from_tiles(v, WM: gl.constexpr):
    """[WM/16, 512] (one K-step of 16-row groups in `triton_fp4_mma_tiles` order) -> logical [WM, 32]."""
    v = gl.reshape(v, [WM // 16, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    v = gl.permute(v, _UNTILE.value)
    return gl.reshape(v, [WM, 32])


@gluon.jit
def _load_step(w_slot, s_lo_slot, s_hi_slot, HALF: gl.constexpr, WM: gl.constexpr, dot_a: gl.constexpr):
    """This warpgroup's share of one ring slot, into registers: its WM/16 weight tiles [WM/16, 512] uint8
    (16 contiguous bytes per lane) and its rows' scale codes (low half: K group 2kk, high: 2kk + 1), [WM]
    uint8 each in the layout of the A operand's rows."""
    p_blk: gl.constexpr = gl.BlockedLayout([1, 16], [1, 32], [4, 1], [1, 0])
    s_lay: gl.constexpr = gl.SliceLayout(1, dot_a)
    return (w_slot.slice(HALF * (WM // 16), WM // 16).load(p_blk), s_lo_slot.slice(HALF * WM, WM).load(s_lay),
            s_hi_slot.slice(HALF * WM, WM).load(s_lay))


@gluon.jit
def _decode(p, s_lo, s_hi, FOLD: gl.constexpr, WM: gl.constexpr, dot_a: gl.constexpr):
    """(`_load_step`'s registers) -> (low, high) [WM, 32] bf16 in the wgmma A-operand layout, scaled: the bit
    decode of `triton_mxfp4.mxfp4_step` (TILED, swap-AB), then times the bf16 2^(s - 127) (FOLD: 2^(s - 1)) of
    each row's scale code."""
    lo, hi = gl.inline_asm_elementwise(_BITS_FOLD_ASM if FOLD else _BITS_ASM, "=r,=r,=r,=r,r", [p],
                                       dtype=(gl.bfloat16, gl.bfloat16), is_pure=True, pack=4)
    lo = gl.convert_layout(_from_tiles(lo, WM), dot_a, assert_trivial=True)
    hi = gl.convert_layout(_from_tiles(hi, WM), dot_a, assert_trivial=True)
    c_lo = s_lo.to(gl.int16)
    c_hi = s_hi.to(gl.int16)
    if FOLD:
        c_lo = c_lo + 126
        c_hi = c_hi + 126
    f_lo = (c_lo << 7).to(gl.bfloat16, bitcast=True)
    f_hi = (c_hi << 7).to(gl.bfloat16, bitcast=True)
    return lo * gl.expand_dims(f_lo, 1), hi * gl.expand_dims(f_hi, 1)


@gluon.jit
def _consumer(BIAS, stride_be, OUT, stride_om, TOPK_W, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, alpha, limit,
              a_lo, a_hi, w_s, s_lo_s, s_hi_s, full, empty, nk, STAGE: gl.constexpr, HALF: gl.constexpr,
              ACT_KIND: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_LIMIT: gl.constexpr, FOLD: gl.constexpr,
              BN: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr):
    """For each of the program's tiles, its stored weight rows n0 + HALF * WM .. + WM: the K loop (the next
    slot's bytes read while this step's two products run), then the epilogue of `triton_moe._moe_gemm`:
    STAGE 1 (gated): + bias, act(gate, up) -> OUT[pair, (n0 + HALF * WM) / 2 .. + WM / 2] in OUT's dtype;
    STAGE 2: (+ bias) * TOPK_W[pair] -> OUT[pair, n0 + HALF * WM .. + WM]."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BM, 16])
    dot_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    ep: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [4, 1], [1, 0])
    c = 0
    num_m = gl.load(NUM_BLOCKS)
    num_n = N // BN
    for t in range(gl.program_id(0), num_m * num_n, gl.num_programs(0)):
        pid_m, pid_n = _tile(t, num_m, num_n, GROUP_M)
        acc = gl.zeros([WM, BM], gl.float32, mma)
        # one step ahead: the next slot's bytes come out of shared memory while this step's products run
        mbarrier.wait(full.index(c % STAGES), (c // STAGES) & 1)
        p, s_lo, s_hi = _load_step(w_s.index(c % STAGES), s_lo_s.index(c % STAGES), s_hi_s.index(c % STAGES), HALF,
                                   WM, dot_a)
        for kk in range(nk):
            slot = c % STAGES
            w_lo, w_hi = _decode(p, s_lo, s_hi, FOLD, WM, dot_a)
            acc = warpgroup_mma(w_lo, a_lo.index(slot).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma(w_hi, a_hi.index(slot).permute((1, 0)), acc, is_async=True)
            if kk + 1 < nk:
                nxt = (c + 1) % STAGES
                mbarrier.wait(full.index(nxt), ((c + 1) // STAGES) & 1)
                p, s_lo, s_hi = _load_step(w_s.index(nxt), s_lo_s.index(nxt), s_hi_s.index(nxt), HALF, WM, dot_a)
            acc = warpgroup_mma_wait(0, deps=(acc, ))
            mbarrier.arrive(empty.index(slot))
            c += 1

        e = gl.load(EXPERT_IDS + pid_m).to(gl.int64)
        n0 = pid_n * BN + HALF * WM
        v = gl.convert_layout(gl.permute(acc, (1, 0)), ep)             # [BM pairs, WM weight rows]
        if HAS_BIAS:
            b = gl.load(BIAS + e * stride_be + n0 + gl.arange(0, WM, layout=gl.SliceLayout(0, ep)))
            v = v + gl.expand_dims(b.to(gl.float32), 0)
        if STAGE == 1:
            gate, up = gl.split(gl.reshape(v, [BM, WM // 2, 2]))
            if HAS_LIMIT:
                gate = gl.minimum(gate, limit)
                up = gl.minimum(gl.maximum(up, -limit), limit)
            if ACT_KIND == 0:                                            # = triton_moe._activate
                h = gate * (1 / (1 + gl.exp(-(alpha * gate)))) * (up + 1.0)
            else:
                h = gate * (1 / (1 + gl.exp(-gate))) * up
            h_lay: gl.constexpr = h.type.layout
            _store_rows(h, _block_pairs(SORTED, pid_m, h_lay), OUT, stride_om, P, n0 // 2)
        else:
            rows = _block_pairs(SORTED, pid_m, ep)
            wt = gl.load(TOPK_W + rows, mask=rows < P, other=0.0)
            _store_rows(v * gl.expand_dims(wt, 1), rows, OUT, stride_om, P, n0)


@gluon.jit
def _block_pairs(SORTED, pid_m, lay: gl.constexpr):
    """The block's sorted pairs [BM] int32, as the rows of a [BM, C] tensor in layout `lay`."""
    return gl.load(SORTED + pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, lay)))


@gluon.jit
def _store_rows(v, rows, OUT, stride_om, P, col0):
    """OUT[rows, col0 ..] = v [BM, C] float32 in OUT's dtype, for the pairs rows < P (`_block_pairs`)."""
    lay: gl.constexpr = v.type.layout
    offs = col0 + gl.arange(0, v.shape[1], layout=gl.SliceLayout(0, lay))
    gl.store(OUT + gl.expand_dims(rows.to(gl.int64) * stride_om, 1) + gl.expand_dims(offs, 0),
             v.to(OUT.dtype.element_ty), mask=gl.expand_dims(rows < P, 1))


@gluon.jit
def _moe_mxfp4_ws(A, stride_am, W, stride_we, WS, stride_se, stride_s1, BIAS, stride_be, OUT, stride_om, TOPK_W,
                  SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, K, alpha, limit, STAGE: gl.constexpr, TOPK: gl.constexpr,
                  ACT_KIND: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_LIMIT: gl.constexpr, FOLD: gl.constexpr,
                  STAGES: gl.constexpr, GROUP_M: gl.constexpr, LOADER_WARPS: gl.constexpr, num_warps: gl.constexpr):
    """Tiles: num_blocks x N / BN (BN = 2 * WM, two consumer warpgroups), program i taking tiles i, i + grid, ..."""
    BN: gl.constexpr = 2 * WM
    nk = K // 64
    a_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=64, element_bitwidth=16, rank=2)
    a_lo = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BM, 32], a_layout)
    a_hi = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BM, 32], a_layout)
    w_s = gl.allocate_shared_memory(gl.uint8, [STAGES, BN // 16, 512], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    s_lo = gl.allocate_shared_memory(gl.uint8, [STAGES, BN], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    s_hi = gl.allocate_shared_memory(gl.uint8, [STAGES, BN], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(full.index(i), count=32 * LOADER_WARPS)
        mbarrier.init(empty.index(i), count=2)
    gl.warp_specialize([
        (_consumer, (BIAS, stride_be, OUT, stride_om, TOPK_W, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, alpha, limit,
                     a_lo, a_hi, w_s, s_lo, s_hi, full, empty, nk, STAGE, 0, ACT_KIND, HAS_BIAS, HAS_LIMIT, FOLD, BN,
                     STAGES, GROUP_M)),
        (_consumer, (BIAS, stride_be, OUT, stride_om, TOPK_W, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, alpha, limit,
                     a_lo, a_hi, w_s, s_lo, s_hi, full, empty, nk, STAGE, 1, ACT_KIND, HAS_BIAS, HAS_LIMIT, FOLD, BN,
                     STAGES, GROUP_M)),
        (_loader, (A, stride_am, W, stride_we, WS, stride_se, stride_s1, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, K,
                   a_lo, a_hi, w_s, s_lo, s_hi, full, empty, nk, STAGE, TOPK, BN, STAGES, GROUP_M, LOADER_WARPS)),
    ], [4, LOADER_WARPS], [232, 56])


def supports(a: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, N: int, K: int) -> bool:
    """Whether `moe_mxfp4_ws` can run this GEMM: bf16 activations, K % 64 == 0 (64-element chunks, one tile
    per 16-row group and K-step), N % 128 == 0, packed weights [E, N, K/2] uint8 contiguous and scales
    [E, K/32, N] uint8 with unit stride along N, on a compute capability 9.0 GPU."""
    return (a.dtype == torch.bfloat16 and K % 64 == 0 and N % (2 * ROWS) == 0
            and w.dtype == torch.uint8 and w.dim() == 3 and w.is_contiguous() and tuple(w.shape[1:]) == (N, K // 2)
            and ws.dim() == 3 and tuple(ws.shape[1:]) == (K // 32, N) and ws.stride(2) == 1
            and ws.stride(1) % 16 == 0 and ws.stride(0) % 16 == 0 and supported(a.device))


def moe_mxfp4_ws(stage, a, w, ws, bias, out, topk_w, sorted_ids, expert_ids, num_blocks, grid_m, P, N, K, topk,
                 act_kind, alpha, limit, fold, stages=4, group_m=8, persistent=True, programs=None):
    """One MXFP4 GEMM of the fused MoE (`supports` must hold): stage 1 writes out [P, N/2] = act(a[p // topk] @
    w[e].T + bias[e]) (gated rows interleaved; act_kind 0 swiglu_oai with alpha and limit (None: no clamp),
    1 silu); stage 2 writes out [P, N] = topk_w[p] * (a[p] @ w[e].T + bias[e]). a bf16, w [E, N, K/2] uint8
    in the tiled bf16-bits layout, ws [E, K/32, N] e8m0 codes, bias [E, N] (float32 or bf16) or None; the routing sort's
    (sorted_ids, expert_ids, num_blocks) for block_m = 128. fold: every scale code <= 128
    (`triton_mxfp4.small_scales`). Tiles of 128 weight rows (two consumer warpgroups of 64), a ring of
    `stages` K-steps (<= 6: shared memory). persistent: at most `programs` programs (None: one per
    multiprocessor)."""
    _check_stages("moe_mxfp4_ws", stages, 6)
    _moe_mxfp4_ws[_grid(a, grid_m, N // (2 * ROWS), persistent, programs)](
        a, a.stride(0), w, w.stride(0), ws, ws.stride(0), ws.stride(1), bias if bias is not None else out,
        bias.stride(0) if bias is not None else 0, out, out.stride(0), topk_w, sorted_ids, expert_ids, num_blocks,
        P, N, K, float(alpha), float(limit if limit is not None else 0.0), STAGE=stage, TOPK=topk,
        ACT_KIND=act_kind, HAS_BIAS=bias is not None, HAS_LIMIT=limit is not None, FOLD=fold,
        STAGES=stages, GROUP_M=group_m, LOADER_WARPS=LOADER_WARPS, num_warps=4)
