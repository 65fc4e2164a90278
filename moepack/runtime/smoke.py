"""`moepack run`: load a converted folder, run every MoE layer on random tokens, time it, and compare
with a float64 reference computed here, independently of the kernels.

Reference (`dense_moe_float64`): the experts' weights dequantized with `moepack.numerics` in float64,
gate/up rows split per the tensors' arrangement, the activation applied, weighted sum over the top-k:

    out[t] = sum_j w[t, j] * (act(x[t] @ W13[e].T + b13[e]) @ W2[e].T + b2[e]),   e = ids[t, j]  (-1: skipped)

- all ranks (`rank=None`): the sum of every rank's `MoELayer` output against the reference over the
  UNSHARDED canonical tensors, rebuilt from all ranks' stored tensors by inverting each manifest chain
  (`Chain.invert`) — exactly what an all-reduce of the ranks would have to reproduce;
- one rank: that rank's output against the reference over its own rank-local logical tensors
  (`Chain.invert_local`; rows [gate; up]; w2_bias on tp_rank 0 only).

Tokens: x ~ N(0, 1) [T, H]; router logits ~ N(0, 1) [T, E] routed with the model's scheme (`route`).
The error is the relative Frobenius norm ||out - ref|| / ||ref||; `ok` compares it with the kernel
tolerance of the quant scheme (`moepack.kernels.reference.TOLERANCE`).
"""
from __future__ import annotations

import time

import torch

from ..formats.model import Activation, Routing
from ..kernels.dense_reference import dense_moe_float64
from .loader import RankCheckpoint, load
from .routing import route


# --- the smoke run -------------------------------------------------------------------------------


def _canonical_layer(ranks: list[RankCheckpoint], layer: int) -> dict[str, torch.Tensor]:
    """Role -> the unsharded canonical tensor of `layer`, rebuilt from every rank's stored tensor."""
    first = ranks[0].moe_layers[layer]
    return {role: chain.invert([r.moe_layers[layer].stored[role].cpu() for r in ranks])
            for role, chain in first.chains.items()}


def _rank_logical(ck: RankCheckpoint, layer: int) -> dict[str, torch.Tensor]:
    m = ck.moe_layers[layer]
    return {role: m.chains[role].invert_local(t.cpu()) for role, t in m.stored.items()}


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = out.to(torch.float64) - ref
    return float(diff.abs().max()), float(diff.norm() / ref.norm().clamp_min(1e-30))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_smoke(out, rank: int | None = None, tokens: int = 8, device="cpu", seed: int = 0,
              allow_emulation: bool = True) -> list[dict]:
    """Rows {layer, ranks, tokens, device, kernel, ms, max_abs_err, rel_err, ok}, one per MoE layer.

    `ms` is the summed wall time of the ranks' `MoELayer` calls (after a warm-up call each)."""
    from ..kernels.reference import TOLERANCE

    dev = torch.device(device)
    first = load(out, rank=rank or 0, device=dev, allow_emulation=allow_emulation)
    world = first.world_size
    ranks = [first] if rank is not None else [first] + [
        load(out, rank=r, device=dev, allow_emulation=allow_emulation) for r in range(1, world)]
    model = first.manifest["model"]
    routing = Routing(**model["routing"])
    activation = Activation(**model["activation"])
    E, H, quant = int(model["num_experts"]), int(model["hidden"]), model["quant"]
    gen = torch.Generator().manual_seed(seed)
    act_dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    static = first.execution.kernel == "triton"       # the Triton kernel applies fp8_tensor's static input scales
    rows = []
    for layer in sorted(first.moe_layers):
        x = torch.randn(tokens, H, generator=gen).to(act_dtype).float()     # the reference sees the same x
        weights, ids = route(torch.randn(tokens, E, generator=gen), routing)
        xd, wd, idd = x.to(dev, act_dtype), weights.to(dev), ids.to(dev)
        total = None
        elapsed = 0.0
        for ck in ranks:
            m = ck.moe_layers[layer]
            m(xd, wd, idd)                       # warm-up: caches the logical form / compiles kernels
            _sync(dev)
            t0 = time.perf_counter()
            y = m(xd, wd, idd)
            _sync(dev)
            elapsed += time.perf_counter() - t0
            y = y.to("cpu", torch.float64)
            total = y if total is None else total + y
        if rank is None:
            ref = dense_moe_float64(x, weights, ids, _canonical_layer(ranks, layer), quant,
                                    model["arrangement"], activation, static_input_scales=static)
        else:
            ck = ranks[0]
            ref = dense_moe_float64(x, weights, ck.moe_layers[layer].local_ids(ids).cpu(), _rank_logical(ck, layer),
                                    quant, "up_only" if model["arrangement"] == "up_only" else "separate",
                                    activation, add_w2_bias=ck.tp_rank == 0, static_input_scales=static)
        max_abs, rel = _rel_err(total, ref)
        tol = TOLERANCE.get(quant, 1e-1) if act_dtype == torch.bfloat16 else 1e-4
        rows.append({"layer": layer, "ranks": "all" if rank is None else rank, "tokens": tokens, "device": str(dev),
                     "kernel": first.execution.kernel + (" (emulated)" if first.execution.emulated else ""),
                     "ms": elapsed * 1e3, "max_abs_err": max_abs, "rel_err": rel, "ok": rel <= tol})
    return rows
