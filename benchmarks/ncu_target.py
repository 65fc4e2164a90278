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
from kernels import ROOT, SHAPES, _inputs, random_stored  # noqa: E402

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
    if a.case == "gptoss":
        from peer_bench import TkLayer
        L = TkLayer(os.path.join(ROOT, ".peer", "tk"), E, H, I, k)
        L.prepare(x, torch.randn(a.m, E, device="cuda"))
    else:
        from peer_bench import PeerLayer, load_peer, tuned_configs
        sg = os.path.join(ROOT, ".peer", "sg")
        L = PeerLayer(load_peer(sg), E, H, I, k, True, tuned_configs(sg, E, I, True))
        L.prepare(x, tw, ids)
    L.gemms()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
