"""Fused-MoE kernel benchmark: moepack's whole Triton layer vs the peers, same inputs, same process.

Run on the GPU machine from the repo root, with the peer sources fetched into .peer/
(`bash ../shared/bench/peer_moe/fetch.sh .peer`):

    python benchmarks/kernels.py [--quick] [--cases gptoss,ds_tp8,ds_tp1] [--out $OUT/kernels.json]

Per case and M: moepack us (routing sort, activation quantization, both GEMMs, activation, top-k sum:
the whole layer, CUDA-graph replay, median of 50), the peer's two GEMM launches alone (its best case),
speed-up, % of the HBM read roof (weight bytes of the experts hit / time) and % of the matmul roof of
the weight dtype's compute (bf16 for MXFP4 w4a16, FP8 for w8a8), and the relative error
||out - ref|| / ||ref|| against a float32 torch reference of the same weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, ".peer"))

from peer_bench import PeerLayer, TkLayer, graph_time, load_peer, roofs, tuned_configs  # noqa: E402

from moepack.formats.model import Activation  # noqa: E402
from moepack.kernels.triton_moe import MoEMeta, fused_moe  # noqa: E402
from moepack.layouts.transform import Chain  # noqa: E402
from moepack.layouts.triton import triton_local_steps  # noqa: E402

MS = [1, 8, 64, 256, 1024, 4096, 16384]


def to_triton(quant: str, gated: bool, logical: dict) -> dict:
    """Logical rank-local tensors -> stored moepack Triton layout (on the same device)."""
    return {role: Chain(triton_local_steps(role, quant, gated, tuple(t.shape))).apply_local(t)
            for role, t in logical.items()}


def deinterleave(t: torch.Tensor) -> torch.Tensor:
    """[E, 2I, ...] rows (gate_j, up_j) -> [gate; up] (gpt-oss source order -> logical)."""
    return torch.cat([t[:, 0::2], t[:, 1::2]], dim=1).contiguous()


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.float().reshape(ref.shape)
    return float((out - ref).norm() / ref.norm())


def bench_gptoss(R, Ms, rows, tk_dir):
    E, H, I, k = 128, 2880, 2880, 4
    L = TkLayer(tk_dir, E, H, I, k)
    logical = {"w13_weight": deinterleave(L.q13), "w13_weight_scale": deinterleave(L.s13),
               "w13_bias": deinterleave(L.b13), "w2_weight": L.q2, "w2_weight_scale": L.s2, "w2_bias": L.b2}
    stored = to_triton("mxfp4", True, logical)
    meta = MoEMeta("mxfp4", Activation("swiglu_oai", alpha=1.702, limit=7.0), True, E, H, I, True)
    g = torch.Generator(device="cuda").manual_seed(1)
    name = "gpt-oss-120b MXFP4 w4a16 (E=128, top-4, H=I=2880)"
    print(f"\n## {name}; peer: triton_kernels matmul_ogs", flush=True)
    _header()
    for M in Ms:
        x = torch.randn(M, H, device="cuda", generator=g).to(torch.bfloat16)
        logits = torch.randn(M, E, device="cuda", generator=g)
        L.prepare(x, logits)
        vals, ids = torch.topk(logits, k, -1)
        tw = torch.softmax(vals, -1).float().contiguous()
        ids = ids.to(torch.int32).contiguous()
        ours = lambda: fused_moe(x, tw, ids, stored, meta)  # noqa: E731
        err = rel(ours(), L.reference()) if M <= 4096 else float("nan")
        peer_err = rel(L.gemms(), L.reference()) if M <= 4096 else float("nan")
        hit = torch.unique(ids).numel()
        _row(rows, R, name, M, k, H, I, hit, L.bytes_per_expert, graph_time(ours), graph_time(L.gemms),
             err, peer_err, R["bf16_TFLOPs"])
    del L, stored
    torch.cuda.empty_cache()


def bench_deepseek(R, Ms, rows, peer_dir, I, label):
    E, H, k = 256, 7168, 8
    pk = load_peer(peer_dir)
    L = PeerLayer(pk, E, H, I, k, True, tuned_configs(peer_dir, E, I, True))
    logical = {"w13_weight": L.w13, "w13_weight_scale": L.s13, "w2_weight": L.w2, "w2_weight_scale": L.s2}
    stored = to_triton("fp8_block", True, logical)
    stored["w2_weight"] = L.w2                     # unchanged by the layout: share, do not copy
    meta = MoEMeta("fp8_block", Activation("silu"), True, E, H, I, True)
    g = torch.Generator(device="cuda").manual_seed(1)
    name = f"DeepSeek-V3 FP8 block {label} (E=256, top-8, H=7168, I={I})"
    print(f"\n## {name}; peer: SGLang fused_moe_kernel", flush=True)
    _header()
    for M in Ms:
        x = torch.randn(M, H, device="cuda", generator=g).to(torch.bfloat16)
        ids = torch.rand(M, E, device="cuda", generator=g).argsort(-1)[:, :k].to(torch.int32).contiguous()
        tw = torch.softmax(torch.randn(M, k, device="cuda", generator=g), -1).contiguous()
        L.prepare(x, tw, ids)
        ours = lambda: fused_moe(x, tw, ids, stored, meta)  # noqa: E731
        ref = L.reference() if M <= 1024 else None
        err = rel(ours(), ref) if ref is not None else float("nan")
        peer_err = rel(L.layer(), ref) if ref is not None else float("nan")
        hit = torch.unique(ids).numel()
        _row(rows, R, name, M, k, H, I, hit, L.bytes_per_expert, graph_time(ours), graph_time(L.gemms),
             err, peer_err, R["fp8_TFLOPs"])
    del L, stored
    torch.cuda.empty_cache()


def _header():
    print("| M | moepack us | peer gemm us | speed-up | % read roof | % matmul roof | rel err | peer rel err |\n"
          "|---|---|---|---|---|---|---|---|", flush=True)


def _row(rows, R, name, M, k, H, I, hit, bytes_per_expert, t, t_peer, err, peer_err, mm_roof):
    gbs = hit * bytes_per_expert / t / 1e9
    tf = 2 * M * k * 3 * I * H / t / 1e12
    row = dict(case=name, M=M, moepack_us=t * 1e6, peer_gemm_us=t_peer * 1e6, speedup=t_peer / t,
               experts_hit=hit, weight_GBps=gbs, pct_read=100 * gbs / R["read_GBps"], TFLOPs=tf,
               pct_matmul=100 * tf / mm_roof, rel_err=err, peer_rel_err=peer_err)
    rows.append(row)
    print(f"| {M} | {row['moepack_us']:.1f} | {row['peer_gemm_us']:.1f} | {row['speedup']:.2f}x | "
          f"{row['pct_read']:.1f} | {row['pct_matmul']:.1f} | {err:.2e} | {peer_err:.2e} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="gptoss,ds_tp8,ds_tp1")
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "kernels.json"))
    a = ap.parse_args()
    import triton
    Ms = [int(m) for m in a.ms.split(",")]
    dev = torch.cuda.get_device_name()
    print(f"# {dev}; torch {torch.__version__}; triton {triton.__version__}", flush=True)
    R = roofs()
    print(f"roofs: copy {R['copy_GBps']:.0f} GB/s, read {R['read_GBps']:.0f} GB/s, "
          f"bf16 {R['bf16_TFLOPs']:.0f} TFLOP/s, fp8 {R['fp8_TFLOPs']:.0f} TFLOP/s", flush=True)
    rows = []
    result = {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "roofs": R, "rows": rows,
              "date": time.strftime("%Y-%m-%d")}
    peer = os.path.join(ROOT, ".peer")
    for case in a.cases.split(","):
        try:
            if case == "gptoss":
                bench_gptoss(R, Ms, rows, os.path.join(peer, "tk"))
            elif case == "ds_tp8":
                bench_deepseek(R, Ms, rows, os.path.join(peer, "sg"), 256, "TP8")
            elif case == "ds_tp1":
                bench_deepseek(R, Ms, rows, os.path.join(peer, "sg"), 2048, "TP1")
        except Exception as exc:  # keep the other cases' numbers
            import traceback
            traceback.print_exc()
            print(f"case {case} failed: {type(exc).__name__}: {exc}", flush=True)
        json.dump(result, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
