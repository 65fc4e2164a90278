"""Runs the single-launch decode (`triton_decode.moe_decode`) under the CPU interpreter; started by
test_triton_decode.py in a subprocess with TRITON_INTERPRET=1. Prints one JSON object: run -> results."""
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch  # noqa: E402

from moe_cases import expected64, make_case, rel_err  # noqa: E402
from moepack.kernels import triton_decode  # noqa: E402
from moepack.kernels.configs import GemmConfig, MoEConfig  # noqa: E402
from moepack.kernels.triton_moe import MoEMeta, decode_applies, fused_moe  # noqa: E402

# (activation dtype, swap-AB, gemm1 splits, gemm2 splits) per case
RUNS = {"mxfp4_swiglu_bias": ((torch.float32, True, 1, 1), (torch.float16, True, 3, 2)),
        "mxfp4_tiles_w13_only": ((torch.float32, False, 1, 1), (torch.float16, False, 2, 2)),
        "fp8_block_silu": ((torch.float32, True, 1, 1), (torch.float32, False, 3, 2), (torch.float16, True, 2, 1))}


def main():
    """Per case: the per-pair path in one launch with K unsplit and split (gemm1 in 3, gemm2 in 2: the
    case's K of 2-3 steps leaves a split empty or short), plain and swap-AB tiles, float32 and float16
    activations; against float64, and against the two-launch per-pair path (float32, K unsplit: the same
    arithmetic, so the same bits). Also the counter buffer after each launch (must be all zero again)."""
    res = {}
    for name in RUNS:
        for x_dtype, swap, s1, s2 in RUNS[name]:
            x, tw, ids, local, stored, meta = make_case(name, seed=3, x_dtype=x_dtype)
            bk = 128 if meta["quant"] == "fp8_block" else 64
            g1 = GemmConfig(block_n=32, block_k=bk, num_warps=4, num_stages=1, swap_ab=swap, split_k=s1)
            g2 = GemmConfig(block_n=32, block_k=bk, num_warps=4, num_stages=1, swap_ab=swap, split_k=s2)
            cfg = MoEConfig(per_pair=True, block_m=16, gemm1=g1, gemm2=g2, fused=2)
            out = fused_moe(x, tw, ids, stored, meta, config=cfg)
            key = f"{name}/{str(x_dtype)[6:]}{'/swap' if swap else ''}/s{s1}{s2}"
            r = {"taken": decode_applies(MoEMeta(**meta), cfg),
                 "plain": rel_err(out, expected64(x, tw, ids, local)),
                 "sync_zero": all(int(b.abs().sum()) == 0 for b in triton_decode._SYNC.values())}
            if s1 == s2 == 1 and x_dtype == torch.float32:
                two = fused_moe(x, tw, ids, stored, meta, config=MoEConfig(per_pair=True, block_m=16, gemm1=g1,
                                                                            gemm2=g2))
                r["same_bits"] = bool(torch.equal(out, two))
            res[key] = r
    print(json.dumps(res))


if __name__ == "__main__":
    main()
