"""Probe (not shipped): can a block-scaled FP8 GEMM overlap each K-step's scale multiply-adds with the next
K-step's wgmma, when written in Gluon (Triton's explicit-layout dialect, `triton.experimental.gluon`)?

Triton's own pipeliner keeps a wgmma in flight only as its own loop-carried accumulator, so
acc += dot(a_k, b_k) * f_k waits for each product before its multiply-adds (docs/KERNEL_NOTES.md v13/v14).
Here the loop is written by hand: step k's product p_k is issued into a fresh register tile (use_acc=False),
then `warpgroup_mma_wait(1)` retires p_{k-1} while p_k still runs, and acc += p_{k-1} * f_{k-1} runs on the
CUDA cores under it. p_k reuses the registers of p_{k-2} (passed as the ignored accumulator input).

Variants on the dense DeepSeek TP1 shapes (the same inputs as ws_probe.py), each timed with CUDA graphs:
  overlap  the loop above
  serial   the same loop waiting for 0 outstanding products before the multiply-adds
  plain    no scales: acc chained through the wgmma (the ceiling of this loop and tile)
  ws, ws2  warp-specialised (`gl.warp_specialize`): a TMA loader warp and two consumer warpgroups of 64 rows
           with full / empty mbarriers, no CTA-wide barrier in the K loop; ws2 with two products in flight
beside torch._scaled_mm (per-tensor scales, the FP8 roof).

Results on the H100 (triton 3.6): RESULTS.md ("Kernels", ninth session) and docs/KERNEL_NOTES.md v15.

    python benchmarks/gluon_probe.py [--timeout 45] [--configs 0,1,...] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

MODES = {"overlap": 0, "serial": 1, "plain": 2}


@gluon.jit
def _factor(AS, rows, nk, kk, sw_a, sw_b, pick):
    """[BM, BN] float32 s_a[row] * s_w[col] of K-step kk (s_w: two scalars, pick selects the second)."""
    sa = gl.expand_dims(gl.load(AS + rows * nk + kk), 1)
    return gl.where(pick, sa * gl.load(sw_b + kk), sa * gl.load(sw_a + kk))


@gluon.jit
def _issue(a_s, b_s, bars, kk, like, STAGES: gl.constexpr):
    """Wait for K-step kk's operands and issue its product into a fresh register tile (async token)."""
    slot = kk % STAGES
    mbarrier.wait(bars.index(slot), (kk // STAGES) & 1)
    return warpgroup_mma(a_s.index(slot), b_s.index(slot).permute((1, 0)), gl.zeros_like(like), use_acc=False,
                         is_async=True)


@gluon.jit
def _refill(a_desc, b_desc, a_s, b_s, bars, om, on, nxt, nk, STAGES: gl.constexpr, BK: gl.constexpr,
            nbytes: gl.constexpr):
    """TMA K-step nxt (if < nk) into its ring slot, whose previous product has been retired."""
    ns = nxt % STAGES
    mbarrier.expect(bars.index(ns), nbytes, pred=nxt < nk)
    tma.async_copy_global_to_shared(a_desc, [om, nxt * BK], bars.index(ns), a_s.index(ns), pred=nxt < nk)
    tma.async_copy_global_to_shared(b_desc, [on, nxt * BK], bars.index(ns), b_s.index(ns), pred=nxt < nk)


@gluon.jit
def _bs_gemm_gl(a_desc, b_desc, AS, BS, c_desc, M, N, K, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
                WARPS_M: gl.constexpr, INSTR_N: gl.constexpr, MODE: gl.constexpr, num_warps: gl.constexpr):
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = b_desc.block_type.shape[0]
    pid = gl.program_id(0)
    nm = M // BM
    nn = N // BN
    width = GROUP_M * nn
    first = (pid // width) * GROUP_M
    gs = gl.minimum(nm - first, GROUP_M)
    om = (first + (pid % width) % gs) * BM
    on = ((pid % width) // gs) * BN
    nk = K // BK

    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS_M, num_warps // WARPS_M],
                                                  instr_shape=[16, INSTR_N, 32])
    a_s = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BM, BK], a_desc.layout)
    b_s = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BN, BK], b_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    nbytes: gl.constexpr = a_desc.block_type.nbytes + b_desc.block_type.nbytes
    for i in gl.static_range(STAGES - 1):
        mbarrier.expect(bars.index(i), nbytes, pred=i < nk)
        tma.async_copy_global_to_shared(a_desc, [om, i * BK], bars.index(i), a_s.index(i), pred=i < nk)
        tma.async_copy_global_to_shared(b_desc, [on, i * BK], bars.index(i), b_s.index(i), pred=i < nk)

    rows = om + gl.arange(0, BM, layout=gl.SliceLayout(1, mma))
    pick = gl.expand_dims(gl.arange(0, BN, layout=gl.SliceLayout(0, mma)) >= 128, 0)
    sw_a = BS + (on // 128) * nk
    sw_b = BS + ((on + BN - 1) // 128) * nk
    acc = gl.zeros([BM, BN], gl.float32, mma)
    if MODE == 2:
        for kk in range(nk):
            slot = kk % STAGES
            mbarrier.wait(bars.index(slot), (kk // STAGES) & 1)
            acc = warpgroup_mma(a_s.index(slot), b_s.index(slot).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(1, deps=(acc, ))
            _refill(a_desc, b_desc, a_s, b_s, bars, om, on, kk + STAGES - 1, nk, STAGES, BK, nbytes)
        acc = warpgroup_mma_wait(0, deps=(acc, ))
    else:
        # Two K-steps per iteration, both products in flight at once (fresh register tiles x and y): retiring
        # x (wait for <= 1 outstanding) lets its multiply-adds run under y's wgmma. Nothing stays in flight
        # across the loop's back edge (ptxas serializes every wgmma otherwise, warning C7514).
        for kk in range(0, nk, 2):
            fx = _factor(AS, rows, nk, kk, sw_a, sw_b, pick)
            fy = _factor(AS, rows, nk, kk + 1, sw_a, sw_b, pick)
            x = _issue(a_s, b_s, bars, kk, fx, STAGES)
            y = _issue(a_s, b_s, bars, kk + 1, fy, STAGES)
            if MODE == 0:
                x = warpgroup_mma_wait(1, deps=(x, ))
            else:
                x = warpgroup_mma_wait(0, deps=(x, ))
            acc = acc + x * fx
            _refill(a_desc, b_desc, a_s, b_s, bars, om, on, kk + STAGES - 1, nk, STAGES, BK, nbytes)
            y = warpgroup_mma_wait(0, deps=(y, ))
            acc = acc + y * fy
            _refill(a_desc, b_desc, a_s, b_s, bars, om, on, kk + STAGES, nk, STAGES, BK, nbytes)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))
    c_s = gl.allocate_shared_memory(c_desc.dtype, [BM, BN], c_desc.layout)
    c_s.store(acc.to(c_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [om, on], c_s)
    tma.store_wait(0)


@gluon.jit
def _ws_producer(a_desc, b_desc, a_s, b_s, full, empty, om, on, nk, STAGES: gl.constexpr):
    """Warp-specialised loader: TMA K-step kk into ring slot kk % STAGES once both consumers released it."""
    BK: gl.constexpr = a_desc.block_type.shape[1]
    nbytes: gl.constexpr = 2 * a_desc.block_type.nbytes + b_desc.block_type.nbytes
    for kk in range(nk):
        slot = kk % STAGES
        mbarrier.wait(empty.index(slot), ((kk // STAGES) & 1) ^ 1, pred=kk >= STAGES)
        mbarrier.expect(full.index(slot), nbytes)
        tma.async_copy_global_to_shared(a_desc, [om, kk * BK], full.index(slot), a_s.index(2 * slot))
        tma.async_copy_global_to_shared(a_desc, [om + a_desc.block_type.shape[0], kk * BK], full.index(slot),
                                        a_s.index(2 * slot + 1))
        tma.async_copy_global_to_shared(b_desc, [on, kk * BK], full.index(slot), b_s.index(slot))


@gluon.jit
def _ws_consumer(a_s, b_s, full, empty, c_s, c_desc, AS, BS, om, on, nk, HALF: gl.constexpr,
                 STAGES: gl.constexpr, TWO: gl.constexpr):
    """One consumer warpgroup: rows om + 64 * HALF .. + 64 of the tile, all BN columns. Each K-step's product
    goes into a fresh register tile (use_acc=False) and is added to acc with its factor; the slot is released
    as soon as the product is retired. TWO: two K-steps' products in flight, the first one's multiply-adds
    under the second's wgmma."""
    BMH: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 32])
    rows = om + HALF * BMH + gl.arange(0, BMH, layout=gl.SliceLayout(1, mma))
    pick = gl.expand_dims(gl.arange(0, BN, layout=gl.SliceLayout(0, mma)) >= 128, 0)
    sw_a = BS + (on // 128) * nk
    sw_b = BS + ((on + BN - 1) // 128) * nk
    acc = gl.zeros([BMH, BN], gl.float32, mma)
    if TWO:
        for kk in range(0, nk, 2):
            fx = _factor(AS, rows, nk, kk, sw_a, sw_b, pick)
            fy = _factor(AS, rows, nk, kk + 1, sw_a, sw_b, pick)
            sx = kk % STAGES
            mbarrier.wait(full.index(sx), (kk // STAGES) & 1)
            x = warpgroup_mma(a_s.index(2 * sx + HALF), b_s.index(sx).permute((1, 0)), gl.zeros_like(fx),
                              use_acc=False, is_async=True)
            sy = (kk + 1) % STAGES
            mbarrier.wait(full.index(sy), ((kk + 1) // STAGES) & 1)
            y = warpgroup_mma(a_s.index(2 * sy + HALF), b_s.index(sy).permute((1, 0)), gl.zeros_like(fy),
                              use_acc=False, is_async=True)
            x = warpgroup_mma_wait(1, deps=(x, ))
            mbarrier.arrive(empty.index(sx))
            acc = acc + x * fx
            y = warpgroup_mma_wait(0, deps=(y, ))
            mbarrier.arrive(empty.index(sy))
            acc = acc + y * fy
    else:
        f = _factor(AS, rows, nk, 0, sw_a, sw_b, pick)
        for kk in range(nk):
            slot = kk % STAGES
            mbarrier.wait(full.index(slot), (kk // STAGES) & 1)
            p = warpgroup_mma(a_s.index(2 * slot + HALF), b_s.index(slot).permute((1, 0)), gl.zeros_like(f),
                              use_acc=False, is_async=True)
            f_next = _factor(AS, rows, nk, gl.minimum(kk + 1, nk - 1), sw_a, sw_b, pick)
            p = warpgroup_mma_wait(0, deps=(p, ))
            mbarrier.arrive(empty.index(slot))
            acc = acc + p * f
            f = f_next
    c_s.index(HALF).store(acc.to(c_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [om + HALF * BMH, on], c_s.index(HALF))
    tma.store_wait(0)


@gluon.jit
def _bs_gemm_ws(a_desc, b_desc, AS, BS, c_desc, M, N, K, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
                TWO: gl.constexpr, num_warps: gl.constexpr):
    """128 x BN tile: a TMA producer warp and two consumer warpgroups of 64 rows each (full / empty mbarrier
    pairs per ring slot, no CTA-wide barrier in the K loop). a_desc blocks are [64, 128]."""
    BMH: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = b_desc.block_type.shape[0]
    pid = gl.program_id(0)
    nm = M // (2 * BMH)
    nn = N // BN
    width = GROUP_M * nn
    first = (pid // width) * GROUP_M
    gs = gl.minimum(nm - first, GROUP_M)
    om = (first + (pid % width) % gs) * (2 * BMH)
    on = ((pid % width) // gs) * BN
    nk = K // BK
    a_s = gl.allocate_shared_memory(a_desc.dtype, [2 * STAGES, BMH, BK], a_desc.layout)
    b_s = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BN, BK], b_desc.layout)
    c_s = gl.allocate_shared_memory(c_desc.dtype, [2, BMH, BN], c_desc.layout)
    full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(full.index(i), count=1)
        mbarrier.init(empty.index(i), count=2)
    gl.warp_specialize([
        (_ws_consumer, (a_s, b_s, full, empty, c_s, c_desc, AS, BS, om, on, nk, 0, STAGES, TWO)),
        (_ws_consumer, (a_s, b_s, full, empty, c_s, c_desc, AS, BS, om, on, nk, 1, STAGES, TWO)),
        (_ws_producer, (a_desc, b_desc, a_s, b_s, full, empty, om, on, nk, STAGES)),
    ], [4, 1], [232, 40])


def bs_gemm_ws(a, a_s, b, b_s, c, BN, two, stages=4):
    M, K = a.shape
    N = b.shape[0]
    f8 = gl.float8e4nv
    ad = TensorDescriptor.from_tensor(a, [64, 128], gl.NVMMASharedLayout.get_default_for([64, 128], f8))
    bd = TensorDescriptor.from_tensor(b, [BN, 128], gl.NVMMASharedLayout.get_default_for([BN, 128], f8))
    cd = TensorDescriptor.from_tensor(c, [64, BN], gl.NVMMASharedLayout.get_default_for([64, BN], gl.bfloat16))
    grid = ((M // 128) * (N // BN),)
    _bs_gemm_ws[grid](ad, bd, a_s, b_s, cd, M, N, K, GROUP_M=8, STAGES=stages, TWO=two, num_warps=4)


def bs_gemm_gl(a, a_s, b, b_s, c, BM, BN, mode, stages=4, nw=8, warps_m=4):
    M, K = a.shape
    N = b.shape[0]
    f8 = gl.float8e4nv
    ad = TensorDescriptor.from_tensor(a, [BM, 128], gl.NVMMASharedLayout.get_default_for([BM, 128], f8))
    bd = TensorDescriptor.from_tensor(b, [BN, 128], gl.NVMMASharedLayout.get_default_for([BN, 128], f8))
    cd = TensorDescriptor.from_tensor(c, [BM, BN], gl.NVMMASharedLayout.get_default_for([BM, BN], gl.bfloat16))
    instr_n = BN // (nw // warps_m)
    grid = ((M // BM) * (N // BN),)
    _bs_gemm_gl[grid](ad, bd, a_s, b_s, cd, M, N, K, GROUP_M=8, STAGES=stages, WARPS_M=warps_m, INSTR_N=instr_n,
                      MODE=MODES[mode], num_warps=nw)


SHAPES = [("tp1 gemm1 M=4096", 32768, 4096, 7168), ("tp1 gemm2 M=16384", 131072, 7168, 2048)]
# (mode, BM, BN, num_warps, warps along M, stages); "ws" / "ws2": warp-specialised, 128 rows (two consumer
# warpgroups), ws2 with two K-steps' products in flight per warpgroup; "scaled_mm" and "triton" the references
CONFIGS = [("scaled_mm",), ("triton",), ("overlap", 64, 256, 8, 4, 4), ("serial", 64, 256, 8, 4, 4),
           ("overlap", 128, 128, 8, 8, 4), ("serial", 128, 128, 8, 8, 4), ("plain", 64, 256, 8, 4, 4),
           ("plain", 128, 256, 8, 8, 4), ("ws", 128, 128, 12, 8, 4), ("ws2", 128, 128, 12, 8, 4),
           ("ws", 128, 128, 12, 8, 5), ("ws2", 128, 128, 12, 8, 5)]


def one(si: int, ci: int) -> dict:
    """Time config ci on shape si (in its own process: a launch that never returns is reported, not waited on)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from kernels import graph_time
    from ws_probe import bs_gemm, dense_inputs, dense_reference
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    name, M, N, K = SHAPES[si]
    cfg = CONFIGS[ci]
    A, As, B, Bs = dense_inputs(M, N, K)
    C = torch.zeros(M, N, dtype=torch.bfloat16, device="cuda")
    mode = cfg[0]
    if mode == "scaled_mm":
        one_ = torch.tensor(1.0, device="cuda")
        fn = lambda: torch._scaled_mm(A, B.T, one_, one_, out_dtype=torch.bfloat16)  # noqa: E731
        row = {"shape": name, "kernel": "torch._scaled_mm"}
    else:
        if mode == "triton":
            fn = lambda: bs_gemm(A, As, B, Bs, C, 128, 128, False, 4, 8)  # noqa: E731
            row = {"shape": name, "kernel": "triton block-scaled 128x128 (ws_probe)"}
        elif mode.startswith("ws"):
            fn = lambda: bs_gemm_ws(A, As, B, Bs, C, cfg[2], mode == "ws2", cfg[5])  # noqa: E731
        else:
            fn = lambda: bs_gemm_gl(A, As, B, Bs, C, cfg[1], cfg[2], mode, cfg[5], cfg[3], cfg[4])  # noqa: E731
        if mode != "triton":
            row = {"shape": name, "kernel": f"gluon {mode}", "BM": cfg[1], "BN": cfg[2], "num_warps": cfg[3],
                   "stages": cfg[5]}
        fn()
        torch.cuda.synchronize()
        r = slice(0, 256)
        ref = dense_reference(A, As, B, Bs, r, mode != "plain")
        row["rel_err"] = float((C[r].float() - ref).norm() / ref.norm())
    t = graph_time(fn)
    row.update({"us": t * 1e6, "TFLOPs": 2 * M * N * K / t / 1e12})
    return row


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ws_probe import run_isolated
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gluon_probe.json"))
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=60, help="seconds per config (compile + timing)")
    ap.add_argument("--configs", default=None, help="comma-separated config indices (default: all)")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(*a.one)))
        return
    cis = [int(c) for c in a.configs.split(",")] if a.configs else range(len(CONFIGS))
    rows = run_isolated(__file__, SHAPES, CONFIGS, cis, a.timeout)
    json.dump({"device": torch.cuda.get_device_name(), "triton": triton.__version__, "torch": torch.__version__,
               "rows": rows}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
