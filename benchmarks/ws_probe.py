"""Probe (not shipped): does Triton's Hopper warp specialization (`tl.range(..., warp_specialize=True)`: a TMA
producer warpgroup and two consumer warpgroups, each 64 rows of the tile) speed up a 128x128 block-scaled FP8
GEMM with contiguous TMA operands? Two dense GEMMs of the DeepSeek TP1 shapes, the same loop with and without
it, and torch._scaled_mm (per-tensor scale, the FP8 roof) beside them; each config in its own process with a
time limit, so a launch that never returns is reported instead of waited on. The configs without scales (a
plain FP8 GEMM, acc = dot(a, b.T, acc)) tell a hang of the specialised loop itself from one of its scale loads.
Results on the H100, triton 3.6: RESULTS.md ("Kernels"; sixth session: without WS 846 / 765-796 TFLOP/s,
every WS config without a result within 30 s).

    python benchmarks/ws_probe.py [--timeout 60] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels import graph_time  # noqa: E402


@triton.jit
def _bs_gemm(a_desc, b_desc, AS, BS, C, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
             GROUP_M: tl.constexpr, WS: tl.constexpr, STAGES: tl.constexpr, SCALED: tl.constexpr):
    pid = tl.program_id(0)
    nm = M // BM
    nn = N // BN
    width = GROUP_M * nn
    g = pid // width
    first = g * GROUP_M
    gs = min(nm - first, GROUP_M)
    pid_m = first + (pid % width) % gs
    pid_n = (pid % width) // gs
    om = pid_m * BM
    on = pid_n * BN
    nk = K // BK
    rows = om + tl.arange(0, BM)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for kk in tl.range(0, nk, warp_specialize=WS, num_stages=STAGES):
        a = a_desc.load([om, kk * BK])
        b = b_desc.load([on, kk * BK])
        if not SCALED:
            acc = tl.dot(a, b.T, acc)
        elif BN == 128:
            sa = tl.load(AS + rows * nk + kk)
            sb = tl.load(BS + (on // 128) * nk + kk)
            acc += tl.dot(a, b.T) * (sa[:, None] * sb)
        else:
            sa = tl.load(AS + rows * nk + kk)
            sb = tl.load(BS + ((on + tl.arange(0, BN)) // 128) * nk + kk)
            acc += tl.dot(a, b.T) * (sa[:, None] * sb[None, :])
    rn = on + tl.arange(0, BN)
    tl.store(C + rows[:, None].to(tl.int64) * N + rn[None, :], acc.to(tl.bfloat16))


def bs_gemm(a, a_s, b, b_s, c, BM, BN, ws, stages, nw, scaled=True):
    M, K = a.shape
    N = b.shape[0]
    ad = TensorDescriptor.from_tensor(a, [BM, 128])
    bd = TensorDescriptor.from_tensor(b, [BN, 128])
    grid = ((M // BM) * (N // BN),)
    _bs_gemm[grid](ad, bd, a_s, b_s, c, M, N, K, BM=BM, BN=BN, BK=128, GROUP_M=8, WS=ws, STAGES=stages,
                   SCALED=scaled, num_warps=nw, num_stages=stages)


SHAPES = [("tp1 gemm1 M=4096", 32768, 4096, 7168), ("tp1 gemm2 M=16384", 131072, 7168, 2048)]
# (warp_specialize, num_warps, BM, BN, stages, scaled)
CONFIGS = [(False, 8, 128, 128, 4, True), (False, 4, 64, 128, 4, True), (True, 4, 128, 128, 3, True),
           (True, 4, 128, 256, 3, True), (False, 8, 128, 128, 3, False), (True, 4, 128, 128, 3, False)]


def dense_inputs(M: int, N: int, K: int):
    """-> A [M, K], As [M, K/128], B [N, K], Bs [N/128, K/128] on the GPU (e4m3 operands, float32 scales)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    A = (torch.randn(M, K, device="cuda", generator=g) * 8).clamp(-448, 448).to(torch.float8_e4m3fn)
    B = (torch.randn(N, K, device="cuda", generator=g) * 8).clamp(-448, 448).to(torch.float8_e4m3fn)
    As = torch.rand(M, K // 128, device="cuda", generator=g) + 0.5
    Bs = torch.rand(N // 128, K // 128, device="cuda", generator=g) + 0.5
    return A, As, B, Bs


def dense_reference(A, As, B, Bs, r: slice, scaled: bool) -> torch.Tensor:
    """float32 rows r of (A * As) @ (B * Bs).T (the scales per 128-group / 128x128 block), or A @ B.T."""
    if not scaled:
        return A[r].float() @ B.float().T
    return ((A[r].float() * As[r].repeat_interleave(128, 1)) @
            (B.float() * Bs.repeat_interleave(128, 0).repeat_interleave(128, 1)).T)


def run_isolated(script: str, shapes: list, configs: list, config_ids, timeout: int) -> list[dict]:
    """Run `script --one si ci` for every shape and config in its own process with a time limit: a launch
    that never returns is reported as such, not waited on. -> the rows (each process prints one JSON line)."""
    import subprocess
    rows = []
    for si in range(len(shapes)):
        for ci in config_ids:
            try:
                p = subprocess.run([sys.executable, script, "--one", str(si), str(ci)], capture_output=True,
                                   text=True, timeout=timeout)
                row = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
                    {"shape": shapes[si][0], "config": configs[ci], "failed": p.stderr.strip()[-400:]}
            except subprocess.TimeoutExpired:
                row = {"shape": shapes[si][0], "config": configs[ci], "failed": f"no result in {timeout} s"}
            print(row, flush=True)
            rows.append(row)
    return rows


def one(si: int, ci: int) -> dict:
    """Time config ci on shape si (run in its own process: a launch that never returns is reported, not waited on)."""
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    name, M, N, K = SHAPES[si]
    ws, nw, BM, BN, st, scaled = CONFIGS[ci]
    A, As, B, Bs = dense_inputs(M, N, K)
    C = torch.empty(M, N, dtype=torch.bfloat16, device="cuda")
    r = slice(0, 256)
    ref = dense_reference(A, As, B, Bs, r, scaled)
    if ci == 0:
        one_ = torch.tensor(1.0, device="cuda")
        t_mm = graph_time(lambda: torch._scaled_mm(A, B.T, one_, one_, out_dtype=torch.bfloat16))
    fn = lambda: bs_gemm(A, As, B, Bs, C, BM, BN, ws, st, nw, scaled)  # noqa: E731
    fn()
    torch.cuda.synchronize()
    err = float((C[r].float() - ref).norm() / ref.norm())
    t = graph_time(fn)
    row = {"shape": name, "ws": ws, "num_warps": nw, "BM": BM, "BN": BN, "stages": st, "scaled": scaled, "us": t * 1e6,
           "TFLOPs": 2 * M * N * K / t / 1e12, "rel_err": err}
    if ci == 0:
        row["scaled_mm_us"] = t_mm * 1e6
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "ws_probe.json"))
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=60, help="seconds per config (compile + timing)")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(*a.one)))
        return
    rows = run_isolated(__file__, SHAPES, CONFIGS, range(len(CONFIGS)), a.timeout)
    json.dump({"device": torch.cuda.get_device_name(), "triton": triton.__version__, "rows": rows},
              open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
