"""Runs the Triton kernels under the CPU interpreter; started by test_triton_interpret.py in a subprocess
with TRITON_INTERPRET=1 (Triton picks interpreter or compiler when a kernel is decorated, i.e. at import,
so the rest of the test suite is not affected). Prints one JSON object: case -> relative error."""
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch  # noqa: E402

from moe_cases import CASES, expected64, ids_with_counts, make_case, rel_err, tokens_for  # noqa: E402
from moepack.kernels.configs import GemmConfig, MoEConfig  # noqa: E402
from moepack.kernels.triton_moe import fused_moe  # noqa: E402


def main(names):
    """Four runs per case: sorted path with float32 activations and per-pair path with float16, each with
    plain tiles and with swap-AB tiles (W @ A.T); MXFP4 cases also a fourth, sorted + swap-AB with K steps of 256 (longer than
    the case's K: the masked tail of a K step). Reports the error against plain float64 and, for fp8, against float64 with the activation
    quantization emulated (the kernel's rounding, checked tightly). FP8 cases also a fifth, sorted + swap-AB
    with the weight tiles read through TMA tensor descriptors; fp8_block cases a sixth, sorted with plain
    256-column tiles (gemm2's tile spans two 128-row weight-scale blocks, gemm1's 128 gate/up pairs)."""
    results = {}
    for name in names:
        runs = [(False, torch.float32, 64, False, False, 32), (True, torch.float16, 64, False, False, 32),
                (False, torch.float32, 64, True, False, 32), (True, torch.float16, 64, True, False, 32)]
        if CASES[name][0] == "mxfp4":
            runs.append((False, torch.float32, 256, True, False, 32))
        else:
            runs.append((False, torch.float32, 64, True, True, 32))
        if CASES[name][0] == "fp8_block":
            runs.append((False, torch.float32, 128, False, False, 256))
        for per_pair, x_dtype, bk, swap, tma, bn in runs:
            x, tw, ids, local, stored, meta = make_case(name, seed=len(results), x_dtype=x_dtype)
            g = GemmConfig(block_n=bn, block_k=bk, num_warps=4, num_stages=1, swap_ab=swap, tma=tma)
            cfg = MoEConfig(per_pair=per_pair, block_m=16, gemm1=g, gemm2=g, prequant=not per_pair)
            out = fused_moe(x, tw, ids, stored, meta, config=cfg)
            key = (f"{name}/{'pair' if per_pair else 'sorted'}/{str(x_dtype)[6:]}/bk{bk}{'/swap' if swap else ''}"
                   f"{'/tma' if tma else ''}{f'/bn{bn}' if bn != 32 else ''}")
            if out.dtype != x.dtype or out.shape != x.shape:
                results[key] = {"plain": float("inf")}
                continue
            results[key] = {"plain": rel_err(out, expected64(x, tw, ids, local))}
            if meta["quant"] != "mxfp4" and x_dtype == torch.float32:
                results[key]["emulated"] = rel_err(out, expected64(x, tw, ids, local, emulate_quant=True))
    for name in names:
        results.update(tail_tile_runs(name))
        if CASES[name][0] == "fp8_block":
            results.update(fused_quant_runs(name))
            results.update(resident_down_runs(name))
    print(json.dumps(results))


def tail_tile_runs(name):
    """tail_div: an expert's last block whose pairs fit in block_m / d rows runs a block_m / d tile. Swap-AB
    tiles (8 warps) of block_m 64 with tail_div 4 (float32 and float16; experts with 12, 28, 40 and 74 pairs: tiles
    of 16, 32, 64, and a whole block plus a 16-row tail) and plain tiles of block_m 128 (float32, where
    only halves keep wgmma; 20, 100, 140 and 60 pairs): the layer must give the same result as whole tiles
    (the test asks for the same bits, except for float32 MXFP4, whose float32 dot the interpreter hands to
    numpy, which may sum a product in another order for another shape)."""
    from moepack.kernels import triton_moe
    out = {}
    for x_dtype, swap, bm, counts in ((torch.float32, True, 64, [12, 28, 40, 74]),
                                      (torch.float16, True, 64, [12, 28, 40, 74]),
                                      (torch.float32, False, 128, [20, 100, 140, 60])):
        E, k = CASES[name][5], CASES[name][6]
        T = tokens_for(counts[:E], k)
        x, tw, _, local, stored, meta = make_case(name, seed=13, x_dtype=x_dtype, T=T)
        ids = ids_with_counts(counts[:E], T, k)
        cfgs = [MoEConfig(per_pair=False, block_m=bm, prequant=meta["quant"] == "fp8_block",
                          gemm1=GemmConfig(32, 128, 8, 1, swap_ab=swap, tail_div=d),
                          gemm2=GemmConfig(32, 128, 8, 1, swap_ab=swap, tail_div=d)) for d in (4, 1)]
        split, whole = (triton_moe.fused_moe(x, tw, ids, stored, meta, config=c) for c in cfgs)
        out[f"tailtiles:{name}/{str(x_dtype)[6:]}/bm{bm}{'/swap' if swap else ''}"] = {
            "tail_div": triton_moe.tail_tiles(cfgs[0], cfgs[0].gemm1), "same_bits": bool(torch.equal(split, whole)),
            "diff": rel_err(split, whole.double()), "plain": rel_err(split, expected64(x, tw, ids, local))}
    return out


def fused_quant_runs(name):
    """gemm1 tiles whose outputs are whole 128-groups (block_n 256, gated) quantize gemm2's input in their
    epilogue: the layer must give the same bits as with the separate quantization pass."""
    from moepack.kernels import triton_moe
    out = {}
    for x_dtype in (torch.float32, torch.float16):
        for swap in (False, True):
            x, tw, ids, local, stored, meta = make_case(name, seed=7, x_dtype=x_dtype)
            g1 = GemmConfig(block_n=256, block_k=128, num_warps=4, num_stages=1, swap_ab=swap)
            g2 = GemmConfig(block_n=32, block_k=128, num_warps=4, num_stages=1)
            cfg = MoEConfig(per_pair=False, block_m=16, gemm1=g1, gemm2=g2, prequant=True)
            fused = triton_moe.fused_moe(x, tw, ids, stored, meta, config=cfg)
            plain = triton_moe.fuses_quant
            triton_moe.fuses_quant = lambda m, c: False
            try:
                two_pass = triton_moe.fused_moe(x, tw, ids, stored, meta, config=cfg)
            finally:
                triton_moe.fuses_quant = plain
            out[f"fusedquant:{name}/{str(x_dtype)[6:]}{'/swap' if swap else ''}"] = {
                "fused": plain(triton_moe.MoEMeta(**meta), cfg), "same_bits": bool(torch.equal(fused, two_pass)),
                "plain": rel_err(fused, expected64(x, tw, ids, local))}
    return out


def resident_down_runs(name):
    """gemm2 with n_tiles > 1 (`_moe_down_resident`: the block's rows held, several output tiles per
    program; here 4 tiles of 32 over N = 192, so the second program's last two tiles lie past N) must give
    the same bits as one tile per program (`_moe_gemm`), with plain and swap-AB tiles, pointer and TMA
    weight loads, K = Ip of two 128-groups (the second partial) and of one (Ip = 96)."""
    from moepack.kernels import triton_moe
    out = {}
    for x_dtype, swap, tma, ip in ((torch.float32, False, False, None), (torch.float32, True, True, 96),
                                   (torch.float16, False, True, 96), (torch.float16, True, False, None)):
        x, tw, ids, local, stored, meta = make_case(name, seed=11, x_dtype=x_dtype, Ip=ip)
        g1 = GemmConfig(block_n=32, block_k=128, num_warps=4, num_stages=1)
        one = GemmConfig(block_n=32, block_k=128, num_warps=4, num_stages=1, swap_ab=swap, tma=tma)
        several = GemmConfig(block_n=32, block_k=128, num_warps=4, num_stages=1, swap_ab=swap, tma=tma, n_tiles=4)
        cfg = MoEConfig(per_pair=False, block_m=16, gemm1=g1, gemm2=several, prequant=True)
        resident = triton_moe.fused_moe(x, tw, ids, stored, meta, config=cfg)
        one_tile = triton_moe.fused_moe(x, tw, ids, stored, meta, config=MoEConfig(
            per_pair=False, block_m=16, gemm1=g1, gemm2=one, prequant=True))
        out[f"resident:{name}/{str(x_dtype)[6:]}/ip{meta['Ip']}{'/swap' if swap else ''}{'/tma' if tma else ''}"] = {
            "resident": triton_moe.resident_down(triton_moe.MoEMeta(**meta), cfg, several, meta["Ip"]),
            "same_bits": bool(torch.equal(resident, one_tile)),
            "plain": rel_err(resident, expected64(x, tw, ids, local))}
    return out


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
