"""Where a fused MoE layer's time goes: each launch of `fused_moe` timed alone (CUDA graph, median), next
to the whole layer, for the benchmark shapes (not a test; needs a GPU).

    python benchmarks/layer_breakdown.py [--cases ds_tp1,ds_tp8,gptoss] [--ms 8,64,256,1024] [--out FILE]

Pieces, in launch order (the shipped config of `moepack.kernels.configs.pick` at each M): `sort` (moe_align:
a memset and three kernels; absent on the per-pair path), `quant x` and `quant inter` (FP8 block with
prequant), `gemm1`, `gemm2`, `combine` (top-k sum). `rest` = whole - sum of the pieces: launch gaps and
anything the pieces miss. Inputs as in benchmarks/kernels.py (random weights of the benchmark shapes).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels import SHAPES, _inputs, _stage_launcher, graph_time, random_stored  # noqa: E402

from moepack.kernels import configs  # noqa: E402
from moepack.kernels.align import moe_align  # noqa: E402
from moepack.kernels.triton_fp8 import quantize_groups  # noqa: E402
from moepack.kernels.triton_moe import _combine  # noqa: E402


def breakdown(case: str, M: int) -> dict:
    quant, E, k, H, I = SHAPES[case]
    st, meta = random_stored(quant, E, H, I)
    x, tw, ids = _inputs(M, E, k, H)
    cfg = configs.pick(meta.quant, M, E, k, H, I)
    opt = (cfg.per_pair, cfg.block_m, cfg.prequant)
    g1, g2, whole, _ = _stage_launcher(st, meta, x, tw, ids, opt, cfg.gemm1, cfg.gemm2)
    P = M * k
    inter = torch.zeros(P, I, dtype=x.dtype, device=x.device)
    y = torch.zeros(P, H, dtype=x.dtype, device=x.device)
    out = torch.empty_like(x)
    fl = ids.reshape(-1)
    t = {}
    if not cfg.per_pair:
        t["sort"] = graph_time(lambda: moe_align(ids, E, cfg.block_m))
    if cfg.prequant:
        t["quant x"] = graph_time(lambda: quantize_groups(x))
    t["gemm1"] = graph_time(g1)
    if cfg.prequant:
        t["quant inter"] = graph_time(lambda: quantize_groups(inter))
    t["gemm2"] = graph_time(g2)
    t["combine"] = graph_time(lambda: _combine[(M, triton.cdiv(H, 1024))](y, fl, out, H, M * k, TOPK=k, BH=1024))
    t["whole"] = graph_time(whole)
    t["rest"] = t["whole"] - sum(v for n, v in t.items() if n != "whole")
    row = {"case": case, "M": M, "config": repr(cfg), **{n: v * 1e6 for n, v in t.items()}}
    print(f"{case} M={M}: " + ", ".join(f"{n} {v * 1e6:.1f}" for n, v in t.items()) + " us", flush=True)
    del st
    torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="ds_tp1,ds_tp8,gptoss")
    ap.add_argument("--ms", default="8,64,256,1024")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [breakdown(c, int(m)) for c in args.cases.split(",") for m in args.ms.split(",")]
    if args.out:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                   "rows": rows}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
