"""One call of moepack's layer and of the peer's GEMMs on the benchmark inputs, for a profiler to attach to
(not a test; GPU). E.g. the gpt-oss GEMMs at M = 4096 under Nsight Compute:

    ncu --clock-control none -k regex:'_moe_gemm|_matmul_ogs' --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats python benchmarks/ncu_target.py --case gptoss --m 4096
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels import SHAPES, _inputs, peer_layer, random_stored  # noqa: E402

from moepack.kernels.triton_moe import fused_moe  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="gptoss", choices=list(SHAPES))
    ap.add_argument("--m", type=int, default=4096)
    ap.add_argument("--no-peer", action="store_true")
    a = ap.parse_args()
    quant, E, k, H, I = SHAPES[a.case]
    st, meta = random_stored(quant, E, H, I)
    x, tw, ids = _inputs(a.m, E, k, H)
    fused_moe(x, tw, ids, st, meta)
    torch.cuda.synchronize()
    if a.no_peer:
        return
    L = peer_layer(a.case)
    if quant == "mxfp4":
        L.prepare(x, torch.randn(a.m, E, device="cuda"))
    else:
        L.prepare(x, tw, ids)
    L.gemms()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
