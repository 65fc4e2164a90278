"""gpt-oss MXFP4 at M = 16384 and 4096 (H100): the table's config (block_m 128 with tail tiles) against
block_m 256 tiles with tail tiles and an 8-warp gemm2, whole layer, 3 rounds alternated of 50 graph replays
each (the sustained clock under the power cap), and each config's bits against its own whole-tile twin in 5
launches. Run on the GPU machine: `python benchmarks/ab_bm256.py` (writes $OUT/ab-bm256.json; raw
benchmarks/tails-ab-h100-2026-11-24-s13-bm256.json)."""
import sys, dataclasses, json, os, torch
sys.path.insert(0, "benchmarks"); sys.path.insert(0, ".")
import kernels as K
from peer_bench import graph_time
from moepack.kernels.configs import GemmConfig as G, MoEConfig, pick
from moepack.kernels.triton_moe import fused_moe
rep = dataclasses.replace
st, meta = K.random_stored("mxfp4", 128, 2880, 2880)
res = []
for M in (16384, 4096):
    x, tw, ids = K._inputs(M, 128, 4, 2880)
    table = pick("mxfp4", M, 128, 4, 2880, 2880)
    v = {"table": table,
         "bm256_t4": MoEConfig(False, 256, G(128, 64, 8, 3, True, tail_div=4), G(128, 64, 8, 3, True, tail_div=4)),
         "bm256_g2tab": MoEConfig(False, 256, G(128, 64, 8, 3, True, tail_div=4), G(128, 128, 4, 3, True, tail_div=2)),
         "table_g2_8w": rep(table, gemm2=G(128, 64, 8, 3, True, tail_div=4))}
    whole = {n: fused_moe(x, tw, ids, st, meta, config=K.tail_variants(c)["table"]) for n, c in v.items()}
    stable = {n: all(torch.equal(fused_moe(x, tw, ids, st, meta, config=c), whole[n]) for _ in range(5))
              for n, c in v.items()}
    ts = {n: [] for n in v}
    for _ in range(3):
        for n, c in v.items():
            ts[n].append(graph_time(lambda: fused_moe(x, tw, ids, st, meta, config=c), 50) * 1e6)
    row = dict(M=M, us={n: sorted(t)[1] for n, t in ts.items()}, rounds=ts, stable=stable)
    res.append(row)
    print(M, {n: round(u, 1) for n, u in row["us"].items()}, stable, flush=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "ab-bm256.json"), "w"), indent=1)
