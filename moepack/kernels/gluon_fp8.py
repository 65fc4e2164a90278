"""Hopper (sm_90) warp-specialised gemm1 and gemm2 for fp8_block, written in Gluon (Triton's explicit-layout
dialect).

gemm2 (`moe_down_ws`): y[p, n] = w[p] * sum over K-steps k of
    dot(q_a[p, k], q_w[e, n, k]) * s_a[p, k] * s_w[e, n // 128, k]       (experts without a w2 bias, as DeepSeek-V3's).
gemm1 (`moe_up_ws`): the same sum over x's quantized row p // topk and w13's interleaved gate/up rows (gate
rows scaled by the gate blocks, up rows by the up blocks), then h = silu(gate) * up, rounded to the
activation dtype and quantized per 128 outputs: gemm2's input, as the Triton gemm1 with QOUT writes it.

A tile = [BM = 64, BN = 256] of the output for one expert block of the routing sort, run by three warp
groups that never wait for each other at a CTA-wide barrier:
  - a loader (4 warps): each K-step, the block's 64 quantized rows A[sorted rows, k:k+128] by cp.async
    (rows are gathered, Hopper TMA cannot) and the two [128, 128] weight tiles by TMA, into a ring of
    STAGES shared-memory slots (`full` / `empty` mbarrier pair per slot);
  - two consumers (one warpgroup each, columns [0, 128) and [128, 256) of the tile): two K-steps' wgmma
    products in flight at a time, each into a fresh register tile, so that retiring the first (wait for
    <= 1 outstanding) lets its scale multiply-adds run under the second's wgmma, and while one warpgroup
    does its multiply-adds the other's wgmma has the tensor cores. gemm1's row maxima for the quantization
    span both consumers: they trade them through shared memory and an mbarrier.
A program takes tiles i, i + grid, ... in `_moe_gemm`'s grouped order: one tile each (grid = all tiles) or,
persistent, one program per multiprocessor, whose loader fills the ring with the next tile's K-steps during
this tile's epilogue.
Triton's own pipeliner cannot express either overlap (docs/KERNEL_NOTES.md v13-v16): it waits for a
product before its multiply-adds, and its automatic warp specialisation hung on the H100 with triton 3.6.

Same arithmetic in the same order as `triton_moe._moe_gemm` with prequant (one fresh 128-deep product per
K-step, acc + product * (s_a * s_w) as one fused multiply-add, then the epilogue), so the two give the same
bits. Needs K % 128 == 0 and N % 256 == 0 (`triton_moe.ws_down_applies`, `triton_moe.ws_up_applies`).
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
def _tile(t, num_m, num_n, GROUP_M: gl.constexpr):
    """(pid_m, pid_n) of tile t < num_m * num_n (num_m routed blocks x num_n column tiles) in `_moe_gemm`'s
    grouped order (GROUP_M consecutive blocks share the weight tiles they read)."""
    width = GROUP_M * num_n
    first_m = (t // width) * GROUP_M
    gsize = gl.minimum(num_m - first_m, GROUP_M)
    return first_m + (t % width) % gsize, (t % width) // gsize


@gluon.jit
def _loader(A, stride_am, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, w_desc, a_s, b_s, full, empty, nk,
            TOPK: gl.constexpr, BM: gl.constexpr, BNH: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
            LOADER_WARPS: gl.constexpr):
    """For each of the program's tiles, fill ring slot c % STAGES with the tile's K-step kk (c counts the
    program's K-steps over its tiles) once both consumers released it: the block's A rows (sorted pair p
    reads row p // TOPK) by cp.async (pairs past P read as zeros), each thread arriving on `full` when its
    copies land; the two weight tiles by TMA. The next tile's steps load during this one's epilogue."""
    blk: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [LOADER_WARPS, 1], [1, 0])
    cols = gl.arange(0, 128, layout=gl.SliceLayout(0, blk))
    c = 0
    num_m = gl.load(NUM_BLOCKS)
    num_n = N // (2 * BNH)
    for t in range(gl.program_id(0), num_m * num_n, gl.num_programs(0)):
        pid_m, pid_n = _tile(t, num_m, num_n, GROUP_M)
        rows = gl.load(SORTED + pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, blk)))
        mask = gl.expand_dims(rows < P, 1)
        a_ptrs = A + gl.expand_dims((rows // TOPK).to(gl.int64) * stride_am, 1) + gl.expand_dims(cols, 0)
        w_row0 = (gl.load(EXPERT_IDS + pid_m).to(gl.int64) * N + pid_n * (2 * BNH)).to(gl.int32)
        for kk in range(nk):
            slot = c % STAGES
            mbarrier.wait(empty.index(slot), ((c // STAGES) & 1) ^ 1, pred=c >= STAGES)
            mbarrier.expect(full.index(slot), 2 * w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(w_desc, [w_row0, kk * 128], full.index(slot), b_s.index(2 * slot))
            tma.async_copy_global_to_shared(w_desc, [w_row0 + BNH, kk * 128], full.index(slot),
                                            b_s.index(2 * slot + 1))
            async_copy.async_copy_global_to_shared(a_s.index(slot), a_ptrs + kk * 128, mask=mask)
            async_copy.mbarrier_arrive(full.index(slot), increment_count=False)
            c += 1


@gluon.jit
def _step_factor(as_rows, mask_m, wa_row, wb_row, stride_s2, kk, GATED: gl.constexpr, BNH: gl.constexpr,
                 mma: gl.constexpr):
    """The K-step's factor: activation scales s_a[row, kk] (rows past P: 0) times the weight scale of the
    warpgroup's columns, [BM, 1] float32 with one weight scale (wa_row); GATED, [BM, BNH]: even columns
    (gate rows) take wa_row's, odd columns (up rows) wb_row's, as `triton_fp8.block_scaled_dot` forms it."""
    sa = gl.load(as_rows + kk, mask=mask_m, other=0.0)
    fa = gl.expand_dims(sa * gl.load(wa_row + kk * stride_s2), 1)
    if GATED:
        fb = gl.expand_dims(sa * gl.load(wb_row + kk * stride_s2), 1)
        odd = gl.expand_dims(gl.arange(0, BNH, layout=gl.SliceLayout(0, mma)) % 2 == 1, 0)
        f = gl.where(odd, fb, fa)
    else:
        f = fa
    return f


@gluon.jit
def _issue(a_s, b_s, full, c, HALF: gl.constexpr, like, STAGES: gl.constexpr):
    """Wait for the program's K-step c's slot and issue its product A @ W_half.T into a fresh register
    tile (async)."""
    slot = c % STAGES
    mbarrier.wait(full.index(slot), (c // STAGES) & 1)
    return warpgroup_mma(a_s.index(slot), b_s.index(2 * slot + HALF).permute((1, 0)), gl.zeros_like(like),
                         use_acc=False, is_async=True)


@gluon.jit
def _k_loop(as_rows, mask_m, wa_row, wb_row, stride_s2, a_s, b_s, full, empty, c0, nk, HALF: gl.constexpr,
            GATED: gl.constexpr, BM: gl.constexpr, BNH: gl.constexpr, STAGES: gl.constexpr, mma: gl.constexpr):
    """One tile's K loop over the ring (its steps are the program's steps c0 .. c0 + nk) -> [BM, BNH]
    float32 accumulator: two products in flight, each retired product's slot released to the loader,
    then acc + product * factor (one fused multiply-add)."""
    acc = gl.zeros([BM, BNH], gl.float32, mma)
    for kk in range(0, nk - 1, 2):
        fx = _step_factor(as_rows, mask_m, wa_row, wb_row, stride_s2, kk, GATED, BNH, mma)
        fy = _step_factor(as_rows, mask_m, wa_row, wb_row, stride_s2, kk + 1, GATED, BNH, mma)
        x = _issue(a_s, b_s, full, c0 + kk, HALF, acc, STAGES)
        y = _issue(a_s, b_s, full, c0 + kk + 1, HALF, acc, STAGES)
        x = warpgroup_mma_wait(1, deps=(x, ))
        mbarrier.arrive(empty.index((c0 + kk) % STAGES))
        acc = acc + x * fx
        y = warpgroup_mma_wait(0, deps=(y, ))
        mbarrier.arrive(empty.index((c0 + kk + 1) % STAGES))
        acc = acc + y * fy
    if nk % 2 == 1:
        kk = nk - 1
        fx = _step_factor(as_rows, mask_m, wa_row, wb_row, stride_s2, kk, GATED, BNH, mma)
        x = _issue(a_s, b_s, full, c0 + kk, HALF, acc, STAGES)
        x = warpgroup_mma_wait(0, deps=(x, ))
        mbarrier.arrive(empty.index((c0 + kk) % STAGES))
        acc = acc + x * fx
    return acc


@gluon.jit
def _block_rows(SORTED, pid_m, TOPK: gl.constexpr, P, AS, stride_asm, BM: gl.constexpr, layout: gl.constexpr):
    """The block's sorted pairs [BM] (int32, in `layout`), their mask (< P) and their A-scale row pointers."""
    rows = gl.load(SORTED + pid_m * BM + gl.arange(0, BM, layout=layout))
    return rows, rows < P, AS + (rows // TOPK).to(gl.int64) * stride_asm


@gluon.jit
def _store_rows(c_s, OUT, stride_om, SORTED, P, pid_m, col0, BM: gl.constexpr, BC: gl.constexpr,
                VEC: gl.constexpr):
    """OUT[sorted pair, col0 : col0 + BC] = c_s [BM, BC] for the block's pairs < P, read from shared memory
    so that each thread stores VEC contiguous elements (16 bytes) of a row."""
    blk: gl.constexpr = gl.BlockedLayout([1, VEC], [32 // (BC // VEC), BC // VEC], [4, 1], [1, 0])
    out = c_s.load(blk)
    rows = gl.load(SORTED + pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, blk)))
    offs = col0 + gl.arange(0, BC, layout=gl.SliceLayout(0, blk))
    gl.store(OUT + gl.expand_dims(rows.to(gl.int64) * stride_om, 1) + gl.expand_dims(offs, 0), out,
             mask=gl.expand_dims(rows < P, 1))


@gluon.jit
def _ring(w_desc, BM: gl.constexpr, BNH: gl.constexpr, STAGES: gl.constexpr, LOADER_WARPS: gl.constexpr):
    """The K-step ring: A slots [STAGES, BM, 128] e4m3, weight slots [2 * STAGES, BNH, 128] e4m3 (two tile
    halves per step), and per slot a `full` mbarrier (the loader's threads' cp.async arrivals + the TMA
    transaction) and an `empty` one (both consumers)."""
    a_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)
    a_s = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, BM, 128], a_layout)
    b_s = gl.allocate_shared_memory(gl.float8e4nv, [2 * STAGES, BNH, 128], w_desc.layout)
    full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(full.index(i), count=1 + 32 * LOADER_WARPS)
        mbarrier.init(empty.index(i), count=2)
    return a_s, b_s, full, empty


@gluon.jit
def _down_consumer(AS, stride_asm, WS, stride_se, stride_s1, stride_s2, OUT, stride_om, TOPK_W, SORTED, EXPERT_IDS,
                   NUM_BLOCKS, P, N, a_s, b_s, c_s, full, empty, nk, HALF: gl.constexpr, BM: gl.constexpr,
                   BNH: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr):
    """For each of the program's tiles, columns HALF * BNH .. + BNH of it: the K loop and the epilogue
    (c_s: this warpgroup's [BM, BNH] staging buffer for the stores)."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BNH, 32])
    c = 0
    num_m = gl.load(NUM_BLOCKS)
    num_n = N // (2 * BNH)
    for t in range(gl.program_id(0), num_m * num_n, gl.num_programs(0)):
        pid_m, pid_n = _tile(t, num_m, num_n, GROUP_M)
        n0 = pid_n * (2 * BNH) + HALF * BNH
        ws_row = WS + gl.load(EXPERT_IDS + pid_m).to(gl.int64) * stride_se + (n0 // 128) * stride_s1
        rows, mask_m, as_rows = _block_rows(SORTED, pid_m, 1, P, AS, stride_asm, BM, gl.SliceLayout(1, mma))
        acc = _k_loop(as_rows, mask_m, ws_row, ws_row, stride_s2, a_s, b_s, full, empty, c, nk, HALF, False,
                      BM, BNH, STAGES, mma)
        c += nk
        wt = gl.load(TOPK_W + rows, mask=mask_m, other=0.0)
        c_s.store((acc * gl.expand_dims(wt, 1)).to(OUT.dtype.element_ty))
        _store_rows(c_s, OUT, stride_om, SORTED, P, pid_m, n0, BM, BNH, 8)


@gluon.jit
def _moe_down_ws(A, stride_am, AS, stride_asm, w_desc, WS, stride_se, stride_s1, stride_s2, OUT, stride_om, TOPK_W,
                 SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, K, BM: gl.constexpr, BNH: gl.constexpr, STAGES: gl.constexpr,
                 GROUP_M: gl.constexpr, LOADER_WARPS: gl.constexpr, num_warps: gl.constexpr):
    """Tiles: num_blocks x N / (2 * BNH), program i taking tiles i, i + grid, ... (grid = all tiles: one
    each; persistent: one program per multiprocessor)."""
    nk = K // 128
    a_s, b_s, full, empty = _ring(w_desc, BM, BNH, STAGES, LOADER_WARPS)
    c_s = gl.allocate_shared_memory(OUT.dtype.element_ty, [2, BM, BNH], gl.SwizzledSharedLayout(8, 1, 8, [1, 0]))
    gl.warp_specialize([
        (_down_consumer, (AS, stride_asm, WS, stride_se, stride_s1, stride_s2, OUT, stride_om, TOPK_W, SORTED,
                          EXPERT_IDS, NUM_BLOCKS, P, N, a_s, b_s, c_s.index(0), full, empty, nk, 0, BM, BNH, STAGES,
                          GROUP_M)),
        (_down_consumer, (AS, stride_asm, WS, stride_se, stride_s1, stride_s2, OUT, stride_om, TOPK_W, SORTED,
                          EXPERT_IDS, NUM_BLOCKS, P, N, a_s, b_s, c_s.index(1), full, empty, nk, 1, BM, BNH, STAGES,
                          GROUP_M)),
        (_loader, (A, stride_am, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, w_desc, a_s, b_s, full, empty, nk, 1, BM, BNH,
                   STAGES, GROUP_M, LOADER_WARPS)),
    ], [4, LOADER_WARPS], [232, 56])


@gluon.jit
def _up_consumer(AS, stride_asm, WS, stride_se, stride_s1, stride_s2, n_scale_blocks, OUT, stride_om, OUT_S,
                 stride_osm, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, a_s, b_s, q_s, x_s, xbar, full, empty, nk,
                 TOPK: gl.constexpr, HALF: gl.constexpr, ROUND: gl.constexpr, BM: gl.constexpr, BNH: gl.constexpr,
                 STAGES: gl.constexpr, GROUP_M: gl.constexpr):
    """For each of the program's tiles, its stored w13 rows HALF * BNH .. + BNH (BNH / 2 gate/up pairs):
    the K loop, silu(gate) * up, rounded to the activation dtype (ROUND: 1 bfloat16, 2 float16, 0 float32),
    then quantized per row over the tile's BNH outputs, whose maxima span both warpgroups: each writes its
    rows' maxima to x_s[tile parity, HALF], arrives on xbar (one phase per tile) and reads the other's.
    Writes OUT [pair, pid_n * BNH + HALF * BNH / 2 ..] e4m3 through q_s, and (HALF 0) the rows' scales
    OUT_S [pair, pid_n]. Tile pid_n's gate scales are row pid_n, its up scales row n_scale_blocks + pid_n."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BNH, 32])
    c = 0
    j = 0
    num_m = gl.load(NUM_BLOCKS)
    num_n = N // (2 * BNH)
    for t in range(gl.program_id(0), num_m * num_n, gl.num_programs(0)):
        pid_m, pid_n = _tile(t, num_m, num_n, GROUP_M)
        ws_e = WS + gl.load(EXPERT_IDS + pid_m).to(gl.int64) * stride_se
        rows, mask_m, as_rows = _block_rows(SORTED, pid_m, TOPK, P, AS, stride_asm, BM, gl.SliceLayout(1, mma))
        acc = _k_loop(as_rows, mask_m, ws_e + pid_n * stride_s1, ws_e + (n_scale_blocks + pid_n) * stride_s1,
                      stride_s2, a_s, b_s, full, empty, c, nk, HALF, True, BM, BNH, STAGES, mma)
        c += nk
        gate, up = gl.split(gl.reshape(acc, [BM, BNH // 2, 2]))
        h = gate * (1 / (1 + gl.exp(-gate))) * up           # = triton_moe._activate (silu), tl.sigmoid's formula
        if ROUND == 1:
            h = h.to(gl.bfloat16).to(gl.float32)
        elif ROUND == 2:
            h = h.to(gl.float16).to(gl.float32)
        m = gl.max(gl.abs(h), axis=1)
        x_s.index(2 * (j % 2) + HALF).store(m)
        gl.thread_barrier()                 # this warpgroup's maxima are all written before its one arrival
        mbarrier.arrive(xbar)
        mbarrier.wait(xbar, j & 1)
        amax = gl.maximum(m, x_s.index(2 * (j % 2) + 1 - HALF).load(m.type.layout))
        j += 1
        s = gl.maximum(amax, 1e-10) / 448.0                  # = triton_fp8.quant_rows
        q_s.store((h / gl.expand_dims(s, 1)).to(gl.float8e4nv))
        _store_rows(q_s, OUT, stride_om, SORTED, P, pid_m, pid_n * BNH + HALF * (BNH // 2), BM, BNH // 2, 16)
        if HALF == 0:
            gl.store(OUT_S + rows.to(gl.int64) * stride_osm + pid_n, gl.convert_layout(s, rows.type.layout),
                     mask=mask_m)


@gluon.jit
def _moe_up_ws(A, stride_am, AS, stride_asm, w_desc, WS, stride_se, stride_s1, stride_s2, OUT, stride_om, OUT_S,
               stride_osm, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, K, n_scale_blocks, TOPK: gl.constexpr,
               ROUND: gl.constexpr, BM: gl.constexpr, BNH: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr,
               LOADER_WARPS: gl.constexpr, num_warps: gl.constexpr):
    """Tiles: num_blocks x N / (2 * BNH), as `_moe_down_ws`. Tile pid_n = stored w13 rows pid_n * 256 ..
    + 256 = outputs pid_n * 128 .. + 128, one scale block."""
    nk = K // 128
    a_s, b_s, full, empty = _ring(w_desc, BM, BNH, STAGES, LOADER_WARPS)
    q_s = gl.allocate_shared_memory(gl.float8e4nv, [2, BM, BNH // 2], gl.SwizzledSharedLayout(16, 1, 8, [1, 0]))
    x_s = gl.allocate_shared_memory(gl.float32, [4, BM], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    xbar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(xbar, count=2)
    gl.warp_specialize([
        (_up_consumer, (AS, stride_asm, WS, stride_se, stride_s1, stride_s2, n_scale_blocks, OUT, stride_om, OUT_S,
                        stride_osm, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, a_s, b_s, q_s.index(0), x_s, xbar, full,
                        empty, nk, TOPK, 0, ROUND, BM, BNH, STAGES, GROUP_M)),
        (_up_consumer, (AS, stride_asm, WS, stride_se, stride_s1, stride_s2, n_scale_blocks, OUT, stride_om, OUT_S,
                        stride_osm, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, a_s, b_s, q_s.index(1), x_s, xbar, full,
                        empty, nk, TOPK, 1, ROUND, BM, BNH, STAGES, GROUP_M)),
        (_loader, (A, stride_am, SORTED, EXPERT_IDS, NUM_BLOCKS, P, N, w_desc, a_s, b_s, full, empty, nk, TOPK, BM,
                   BNH, STAGES, GROUP_M, LOADER_WARPS)),
    ], [4, LOADER_WARPS], [232, 56])


def _weight_descriptor(w):
    """TMA descriptor over w [E, N, K] e4m3 viewed [E * N, K], [BNH, 128] boxes."""
    E, N, K = w.shape
    layout = gl.NVMMASharedLayout.get_default_for([BNH, 128], gl.float8e4nv)
    return TensorDescriptor(w.view(E * N, K), [E * N, K], [K, 1], [BNH, 128], layout)


def _check_stages(name, stages, most):
    if not 2 <= stages <= most:
        raise ValueError(f"{name}: stages must be 2..{most} (shared memory), got {stages}")


def _grid(a, grid_m, num_n, persistent, programs):
    """One program per tile (grid_m blocks at most x num_n column tiles), or, persistent, at most `programs`
    (None: one per multiprocessor), each walking every grid-th tile (the next tile's loads under this one's
    epilogue). Also used by `gluon_mxfp4`."""
    tiles = grid_m * num_n
    if persistent:
        tiles = min(tiles, programs or torch.cuda.get_device_properties(a.device).multi_processor_count)
    return (max(tiles, 1),)


def moe_down_ws(a2, a2s, w2, w2s, y, topk_w, sorted_ids, expert_ids, num_blocks, grid_m, P, N, K,
                stages: int = 4, group_m: int = 8, persistent: bool = False, programs: int | None = None):
    """y [P, N] = gemm2 of fp8_block with prequant: a2 [P, K] float8_e4m3fn with group scales a2s [P, K/128]
    float32, w2 [E, N, K] float8_e4m3fn with block scales w2s [E, N/128, K/128] float32, topk_w [P] float32;
    the routing sort's (sorted_ids, expert_ids, num_blocks) for block_m = 64.
    Shared memory: stages x 40 KiB for the ring + 32 KiB for the store staging, so stages <= 4.
    persistent: at most `programs` programs (None: one per multiprocessor) walking the tiles (`_grid`); else
    one per tile."""
    _check_stages("moe_down_ws", stages, 4)
    se, s1, s2 = w2s.stride()
    _moe_down_ws[_grid(a2, grid_m, N // (2 * BNH), persistent, programs)](
        a2, a2.stride(0), a2s, a2s.stride(0), _weight_descriptor(w2), w2s, se, s1, s2, y, y.stride(0), topk_w,
        sorted_ids, expert_ids, num_blocks, P, N, K, BM=BM, BNH=BNH, STAGES=stages, GROUP_M=group_m,
        LOADER_WARPS=LOADER_WARPS, num_warps=4)


def moe_up_ws(a1, a1s, w13, w13s, a2, a2s, sorted_ids, expert_ids, num_blocks, grid_m, P, N, K, topk, round_code,
              stages: int = 4, group_m: int = 8, persistent: bool = False, programs: int | None = None):
    """gemm1 of fp8_block with prequant, silu-gated, no bias, writing gemm2's quantized input: a1 [T, K]
    float8_e4m3fn with group scales a1s [T, K/128] float32 (pair p reads row p // topk), w13 [E, N = 2I, K]
    float8_e4m3fn with gate/up rows interleaved and block scales w13s [E, 2 * I/128, K/128] float32 (gate
    blocks, then up blocks) -> a2 [P, I] float8_e4m3fn and a2s [P, I/128] float32, the bits of
    `triton_moe._moe_gemm` with QOUT (round_code: `triton_moe.ROUND_CODE` of the activation dtype).
    Shared memory: stages x 40 KiB for the ring + 8.5 KiB for the store staging and the row maxima, so
    stages <= 5. persistent: as `moe_down_ws`."""
    _check_stages("moe_up_ws", stages, 5)
    se, s1, s2 = w13s.stride()
    _moe_up_ws[_grid(a1, grid_m, N // (2 * BNH), persistent, programs)](
        a1, a1.stride(0), a1s, a1s.stride(0), _weight_descriptor(w13), w13s, se, s1, s2, a2, a2.stride(0), a2s,
        a2s.stride(0), sorted_ids, expert_ids, num_blocks, P, N, K, N // 256, TOPK=topk, ROUND=round_code, BM=BM,
        BNH=BNH, STAGES=stages, GROUP_M=group_m, LOADER_WARPS=LOADER_WARPS, num_warps=4)


def supported(device: torch.device) -> bool:
    """Whether this kernel (and `gluon_mxfp4`'s) can run on `device`: CUDA compute capability 9.0 (Hopper; its
    wgmma and setmaxnreg)."""
    return device.type == "cuda" and not torch.version.hip and torch.cuda.get_device_capability(device) == (9, 0)
