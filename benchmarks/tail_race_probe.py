"""Why `triton_moe.tail_tiles` stops 4-warp programs at halves (docs/KERNEL_NOTES.md v19): gpt-oss MXFP4 at
M = 4096 and 16384 (E = 128, random stored bytes), the table's whole-tile layer against gemm2 with tail tiles
in several programs: quarter tiles of a 4-warp, 3-stage program (q43; the 128 x 32 tile raced on the H100:
NaNs and launch-to-launch differences, only in rows routed to experts with a quarter-size last block), the
same with 2 stages (q42), 8 warps (q83), halves only (h43), and q43 with group_m 1. Prints, per variant,
the elements differing from the whole tiles, the share of those rows that have an expert with a quarter
tail, NaNs, and whether two launches agree. Run on the GPU machine: `python benchmarks/tail_race_probe.py`.
`tail_tiles` caps 4-warp programs at halves, so to reproduce the race on a build that has the cap, lift it."""
import sys, dataclasses, torch
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import kernels as K
from moepack.kernels.configs import GemmConfig, MoEConfig, pick
from moepack.kernels.triton_moe import fused_moe
from moepack.kernels.align import moe_align
rep = dataclasses.replace
st, meta = K.random_stored("mxfp4", 128, 2880, 2880)
for M in (4096, 16384):
    x, tw, ids = K._inputs(M, 128, 4, 2880)
    base = pick("mxfp4", M, 128, 4, 2880, 2880)
    ref = fused_moe(x, tw, ids, st, meta, config=base)
    print("M", M, "table nan", int(ref.isnan().sum()), "max", float(ref.float().abs().max()), flush=True)
    counts = torch.bincount(ids.flatten().long(), minlength=128)
    quarter_e = ((counts % 128 > 0) & (counts % 128 <= 32)).nonzero().flatten()
    for name, g2 in [("q43", rep(base.gemm2, tail_div=4)), ("q42", rep(base.gemm2, tail_div=4, num_stages=2)),
                     ("q83", rep(base.gemm2, tail_div=4, num_warps=8)), ("h43", rep(base.gemm2, tail_div=2)),
                     ("q43_g1", rep(base.gemm2, tail_div=4))]:
        cfg = rep(base, gemm2=g2, group_m=1 if name.endswith("g1") else base.group_m)
        outs = [fused_moe(x, tw, ids, st, meta, config=cfg) for _ in range(2)]
        bad = (outs[0] != ref)
        rows = bad.any(1).nonzero().flatten()
        in_q = torch.isin(ids[rows].long(), quarter_e.to(ids.device)).any(1).float().mean().item() if len(rows) else -1
        print(name, "ndiff", int(bad.sum()), "rows", len(rows), "frac rows with a quarter expert", in_q,
              "nan", int(outs[0].isnan().sum()), "repeat same", bool(torch.equal(outs[0], outs[1])), flush=True)
