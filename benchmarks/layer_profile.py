"""Where the whole fused-MoE layer's GPU time goes, kernel by kernel, from the CUDA profiler (no per-piece
timing overhead): moepack's layer and the peer's GEMM launches on the benchmark inputs (not a test; GPU).

    python benchmarks/layer_profile.py [--cases gptoss,ds_tp8,ds_tp1] [--ms 64,1024,4096,16384] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels import SHAPES, _inputs, peer_layer, random_stored  # noqa: E402

from moepack.kernels.triton_moe import fused_moe  # noqa: E402


def kernel_times(fn, reps=5) -> list[tuple[str, float]]:
    """[(kernel name, median us)] in launch order for one call of fn."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    ev.sort(key=lambda e: e.time_range.start)
    n = len(ev) // reps
    out = []
    for i in range(n):
        ts = sorted(ev[r * n + i].time_range.elapsed_us() for r in range(reps))
        out.append((ev[i].name[:60], ts[reps // 2]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="gptoss,ds_tp8,ds_tp1")
    ap.add_argument("--ms", default="64,1024,4096,16384")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "layer_profile.json"))
    a = ap.parse_args()
    rows = []
    for case in a.cases.split(","):
        quant, E, k, H, I = SHAPES[case]
        st, meta = random_stored(quant, E, H, I)
        for M in map(int, a.ms.split(",")):
            x, tw, ids = _inputs(M, E, k, H)
            ks = kernel_times(lambda: fused_moe(x, tw, ids, st, meta))
            tot = sum(t for _, t in ks)
            print(f"{case} M={M}: sum {tot:.1f} us: " + "; ".join(f"{n} {t:.1f}" for n, t in ks), flush=True)
            rows.append({"case": case, "M": M, "kernels": ks, "sum_us": tot})
        del st
        torch.cuda.empty_cache()
    if "gptoss" in a.cases:
        _, E, _, H, _ = SHAPES["gptoss"]
        L = peer_layer("gptoss")
        for M in map(int, a.ms.split(",")):
            g = torch.Generator(device="cuda").manual_seed(1)
            x = torch.randn(M, H, device="cuda", generator=g).to(torch.bfloat16)
            L.prepare(x, torch.randn(M, E, device="cuda", generator=g))
            ks = kernel_times(L.gemms)
            tot = sum(t for _, t in ks)
            print(f"peer gptoss M={M}: sum {tot:.1f} us: " + "; ".join(f"{n} {t:.1f}" for n, t in ks), flush=True)
            rows.append({"case": "peer_gptoss", "M": M, "kernels": ks, "sum_us": tot})
    json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
