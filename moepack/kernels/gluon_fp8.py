"""Hopper (sm_90) warp-specialised gemm2 for fp8_block, written in Gluon (Triton's explicit-layout dialect).

y[p, n] = w[p] * sum over K-steps k of dot(q_a[p, k-group], q_w[e, n, k-group]) * s_a[p, k] * s_w[e, n // 128, k]
(experts without a w2 bias, as DeepSeek-V3's)

One program = one [BM = 64, BN = 256] tile of y for one expert block of the routing sort, run by three
warp groups that never wait for each other at a CTA-wide barrier:
  - a loader (4 warps): each K-step, the block's 64 quantized rows A[sorted rows, k:k+128] by cp.async
    (rows are gathered, Hopper TMA cannot) and the two [128, 128] weight tiles by TMA, into a ring of
    STAGES shared-memory slots (`full` / `empty` mbarrier pair per slot);
  - two consumers (one warpgroup each, columns [0, 128) and [128, 256) of the tile): two K-steps' wgmma
    products in flight at a time, each into a fresh register tile, so that retiring the first (wait for
    <= 1 outstanding) lets its scale multiply-adds run under the second's wgmma, and while one warpgroup
    does its multiply-adds the other's wgmma has the tensor cores.
Triton's own pipeliner cannot express either overlap (docs/KERNEL_NOTES.md v13-v15): it waits for a
product before its multiply-adds, and its automatic warp specialisation hung on the H100 with triton 3.6.

Same arithmetic in the same order as `triton_moe._moe_gemm` STAGE 2 with prequant (one fresh 128-deep
product per K-step, acc + product * (s_a * s_w) as one fused multiply-add, then * w), so the
two give the same bits. Needs K % 128 == 0 and N % 256 == 0 (`triton_moe.ws_down_applies`).
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

BM = 64          # rows per program = the routing sort's block_m
BNH = 128        # columns per consumer warpgroup (one weight-scale block)
LOADER_WARPS = 4


@gluon.jit
def _down_loader(A, stride_am, SORTED, P, pid_m, w_desc, w_row0, a_s, b_s, full, empty, nk,
                 BM: gl.constexpr, BNH: gl.constexpr, STAGES: gl.constexpr, LOADER_WARPS: gl.constexpr):
    """Fill ring slot kk % STAGES with K-step kk once both consumers released it: A rows by cp.async (rows
    past P read as zeros), each thread arriving on `full` when its copies land; the weight tiles by TMA."""
    blk: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [LOADER_WARPS, 1], [1, 0])
    rows = gl.load(SORTED + pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, blk)))
    mask = gl.expand_dims(rows < P, 1)
    cols = gl.arange(0, 128, layout=gl.SliceLayout(0, blk))
    a_ptrs = A + gl.expand_dims(rows.to(gl.int64) * stride_am, 1) + gl.expand_dims(cols, 0)
    for kk in range(nk):
        slot = kk % STAGES
        mbarrier.wait(empty.index(slot), ((kk // STAGES) & 1) ^ 1, pred=kk >= STAGES)
        mbarrier.expect(full.index(slot), 2 * w_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(w_desc, [w_row0, kk * 128], full.index(slot), b_s.index(2 * slot))
        tma.async_copy_global_to_shared(w_desc, [w_row0 + BNH, kk * 128], full.index(slot),
                                        b_s.index(2 * slot + 1))
        async_copy.async_copy_global_to_shared(a_s.index(slot), a_ptrs + kk * 128, mask=mask)
        async_copy.mbarrier_arrive(full.index(slot), increment_count=False)


@gluon.jit
def _step_factor(as_rows, mask_m, ws_row, stride_s2, kk):
    """[BM, 1] float32 s_a[row, kk] * s_w[kk]: the K-step's activation scales times the tile half's one
    weight scale (rows past P: 0)."""
    sa = gl.load(as_rows + kk, mask=mask_m, other=0.0)
    return gl.expand_dims(sa * gl.load(ws_row + kk * stride_s2), 1)


@gluon.jit
def _issue(a_s, b_s, full, kk, HALF: gl.constexpr, like, STAGES: gl.constexpr):
    """Wait for K-step kk's slot and issue its product A @ W_half.T into a fresh register tile (async)."""
    slot = kk % STAGES
    mbarrier.wait(full.index(slot), (kk // STAGES) & 1)
    return warpgroup_mma(a_s.index(slot), b_s.index(2 * slot + HALF).permute((1, 0)), gl.zeros_like(like),
                         use_acc=False, is_async=True)


@gluon.jit
def _down_consumer(AS, stride_asm, WS, stride_s2, ws_row0, OUT, stride_om, TOPK_W, SORTED, P, pid_m, n0, a_s, b_s,
                   c_s, full, empty, nk, HALF: gl.constexpr, BM: gl.constexpr, BNH: gl.constexpr, STAGES: gl.constexpr):
    """Columns n0 + HALF * BNH .. + BNH of the tile: the K loop (two products in flight) and the epilogue
    (c_s: this warpgroup's [BM, BNH] staging buffer for the stores)."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BNH, 32])
    rows = gl.load(SORTED + pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, mma)))
    mask_m = rows < P
    r64 = rows.to(gl.int64)
    as_rows = AS + r64 * stride_asm
    ws_row = WS + ws_row0
    acc = gl.zeros([BM, BNH], gl.float32, mma)
    for kk in range(0, nk - 1, 2):
        fx = _step_factor(as_rows, mask_m, ws_row, stride_s2, kk)
        fy = _step_factor(as_rows, mask_m, ws_row, stride_s2, kk + 1)
        x = _issue(a_s, b_s, full, kk, HALF, acc, STAGES)
        y = _issue(a_s, b_s, full, kk + 1, HALF, acc, STAGES)
        x = warpgroup_mma_wait(1, deps=(x, ))
        mbarrier.arrive(empty.index(kk % STAGES))
        acc = acc + x * fx
        y = warpgroup_mma_wait(0, deps=(y, ))
        mbarrier.arrive(empty.index((kk + 1) % STAGES))
        acc = acc + y * fy
    if nk % 2 == 1:
        kk = nk - 1
        fx = _step_factor(as_rows, mask_m, ws_row, stride_s2, kk)
        x = _issue(a_s, b_s, full, kk, HALF, acc, STAGES)
        x = warpgroup_mma_wait(0, deps=(x, ))
        mbarrier.arrive(empty.index(kk % STAGES))
        acc = acc + x * fx
    wt = gl.load(TOPK_W + rows, mask=mask_m, other=0.0)
    # through shared memory, so that each thread stores 16 contiguous bytes of a row of y
    c_s.store((acc * gl.expand_dims(wt, 1)).to(OUT.dtype.element_ty))
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])
    out = c_s.load(blk)
    rows_o = gl.load(SORTED + pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, blk)))
    offs_n = n0 + HALF * BNH + gl.arange(0, BNH, layout=gl.SliceLayout(0, blk))
    gl.store(OUT + gl.expand_dims(rows_o.to(gl.int64) * stride_om, 1) + gl.expand_dims(offs_n, 0), out,
             mask=gl.expand_dims(rows_o < P, 1))


@gluon.jit
def _moe_down_ws(A, stride_am, AS, stride_asm, w_desc, WS, stride_se, stride_s1, stride_s2, OUT, stride_om, TOPK_W,
                 SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, K, BM: gl.constexpr, BNH: gl.constexpr, STAGES: gl.constexpr,
                 GROUP_M: gl.constexpr, LOADER_WARPS: gl.constexpr, num_warps: gl.constexpr):
    """Grid: max blocks x N / (2 * BNH), in `_moe_gemm`'s grouped order (GROUP_M blocks share weight tiles)."""
    pid = gl.program_id(0)
    num_n = N // (2 * BNH)
    num_m = gl.load(NUM_BLOCKS)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    gsize = gl.minimum(num_m - first_m, GROUP_M)
    if gsize <= 0:
        return
    pid_m = first_m + (pid % width) % gsize
    pid_n = (pid % width) // gsize
    if pid_n >= num_n:     # the last group has fewer than GROUP_M blocks
        return
    e = gl.load(EXPERT_IDS + pid_m).to(gl.int64)
    n0 = pid_n * (2 * BNH)
    nk = K // 128
    a_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)
    a_s = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BM, 128], a_layout)
    b_s = gl.allocate_shared_memory(gl.float8e4nv, [2 * STAGES, BNH, 128], w_desc.layout)
    c_s = gl.allocate_shared_memory(OUT.dtype.element_ty, [2, BM, BNH], gl.SwizzledSharedLayout(8, 1, 8, [1, 0]))
    full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(full.index(i), count=1 + 32 * LOADER_WARPS)
        mbarrier.init(empty.index(i), count=2)
    ws_e = e * stride_se
    ws0 = ws_e + (n0 // 128) * stride_s1
    ws1 = ws_e + (n0 // 128 + 1) * stride_s1
    w_row0 = (e * N + n0).to(gl.int32)
    gl.warp_specialize([
        (_down_consumer, (AS, stride_asm, WS, stride_s2, ws0, OUT, stride_om, TOPK_W, SORTED, P, pid_m, n0,
                          a_s, b_s, c_s.index(0), full, empty, nk, 0, BM, BNH, STAGES)),
        (_down_consumer, (AS, stride_asm, WS, stride_s2, ws1, OUT, stride_om, TOPK_W, SORTED, P, pid_m, n0,
                          a_s, b_s, c_s.index(1), full, empty, nk, 1, BM, BNH, STAGES)),
        (_down_loader, (A, stride_am, SORTED, P, pid_m, w_desc, w_row0, a_s, b_s, full, empty, nk, BM, BNH, STAGES,
                        LOADER_WARPS)),
    ], [4, LOADER_WARPS], [232, 56])


def moe_down_ws(a2, a2s, w2, w2s, y, topk_w, sorted_ids, expert_ids, num_blocks, grid_m, P, N, K,
                stages: int = 4, group_m: int = 8):
    """y [P, N] = gemm2 of fp8_block with prequant: a2 [P, K] float8_e4m3fn with group scales a2s [P, K/128]
    float32, w2 [E, N, K] float8_e4m3fn with block scales w2s [E, N/128, K/128] float32, topk_w [P] float32;
    the routing sort's (sorted_ids, expert_ids, num_blocks) for block_m = 64.
    Shared memory: stages x 40 KiB for the ring + 32 KiB for the store staging, so stages <= 4."""
    if not 2 <= stages <= 4:
        raise ValueError(f"moe_down_ws: stages must be 2..4 (shared memory), got {stages}")
    E = w2.shape[0]
    layout = gl.NVMMASharedLayout.get_default_for([BNH, 128], gl.float8e4nv)
    w_desc = TensorDescriptor(w2.view(E * N, K), [E * N, K], [K, 1], [BNH, 128], layout)
    grid = (grid_m * (N // (2 * BNH)),)
    se, s1, s2 = w2s.stride()
    _moe_down_ws[grid](a2, a2.stride(0), a2s, a2s.stride(0), w_desc, w2s, se, s1, s2, y, y.stride(0), topk_w,
                       sorted_ids, expert_ids, num_blocks, P, N, K, BM=BM, BNH=BNH, STAGES=stages, GROUP_M=group_m,
                       LOADER_WARPS=LOADER_WARPS, num_warps=4)


def supported(device: torch.device) -> bool:
    """Whether this kernel can run on `device`: CUDA compute capability 9.0 (Hopper; its wgmma and setmaxnreg)."""
    return device.type == "cuda" and not torch.version.hip and torch.cuda.get_device_capability(device) == (9, 0)
