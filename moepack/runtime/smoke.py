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
from ..numerics import FP8_BLOCK, dequant_fp8_block, dequant_mxfp4, quantize_fp8_e4m3
from .loader import RankCheckpoint, load
from .routing import route


# --- independent float64 reference --------------------------------------------------------------


def _split_rows(t: torch.Tensor, arrangement: str) -> tuple[torch.Tensor | None, torch.Tensor]:
    """[E, R, ...] w13 rows -> (gate [E, I, ...] or None, up [E, I, ...]) per the rows' arrangement."""
    if arrangement == "up_only":
        return None, t
    if arrangement == "interleaved":
        return t[:, 0::2], t[:, 1::2]
    if arrangement == "separate":
        half = t.shape[1] // 2
        return t[:, :half], t[:, half:]
    raise ValueError(f"unknown arrangement {arrangement!r}")


def dequant_experts(t: dict[str, torch.Tensor], quant: str, arrangement: str
                    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Expert tensors by role -> float64 (gate [E, I, H] or None, up [E, I, H], down [E, H, I])."""
    f64 = torch.float64
    w13, s13, w2, s2 = t["w13_weight"], t["w13_weight_scale"], t["w2_weight"], t["w2_weight_scale"]
    if quant == "mxfp4":                      # scales are per row: dequantize, then split rows
        gate, up = _split_rows(dequant_mxfp4(w13, s13, f64), arrangement)
        return gate, up, dequant_mxfp4(w2, s2, f64)
    if arrangement == "interleaved":
        raise ValueError(f"{quant}: interleaved gate/up rows are not a layout moepack reads")
    gate_q, up_q = _split_rows(w13, arrangement)
    if quant == "fp8_block":                  # scale rows: gate blocks then up blocks
        nb = -(-up_q.shape[1] // FP8_BLOCK)
        up = dequant_fp8_block(up_q, s13[:, -nb:], dtype=f64)
        gate = None if gate_q is None else dequant_fp8_block(gate_q, s13[:, :nb], dtype=f64)
        return gate, up, dequant_fp8_block(w2, s2, dtype=f64)
    if quant == "fp8_tensor":                 # s13 [E, S]: (gate, up) scalars, or (up,)
        s13, s2 = s13.to(f64), s2.to(f64).reshape(-1)
        up = up_q.to(f64) * s13[:, -1, None, None]
        gate = None if gate_q is None else gate_q.to(f64) * s13[:, 0, None, None]
        return gate, up, w2.to(f64) * s2[:, None, None]
    raise ValueError(f"unknown quant scheme {quant!r}")


def _activation64(gate: torch.Tensor | None, up: torch.Tensor, act: Activation) -> torch.Tensor:
    if act.kind == "relu2":
        return torch.clamp(up, min=0) ** 2
    if act.limit is not None:
        gate = torch.clamp(gate, max=act.limit)
        up = torch.clamp(up, -act.limit, act.limit)
    if act.kind == "swiglu_oai":
        a = 1.0 if act.alpha is None else act.alpha
        return gate / (1 + torch.exp(-a * gate)) * (up + 1)
    if act.kind == "silu":
        return gate / (1 + torch.exp(-gate)) * up
    raise ValueError(f"unknown activation {act.kind!r}")


def _static_fp8(a: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """a rounded through float8_e4m3fn with a static per-tensor `scale` (saturating at +-448): q(a / s) * s."""
    return quantize_fp8_e4m3(a / scale).to(torch.float64) * scale


def dense_moe_float64(x: torch.Tensor, topk_weights: torch.Tensor, ids: torch.Tensor, experts: dict[str, torch.Tensor],
                      quant: str, arrangement: str, activation: Activation, add_w2_bias: bool = True,
                      static_input_scales: bool = False) -> torch.Tensor:
    """x [T, H], topk_weights [T, k], ids [T, k] (indices into dim 0 of `experts`, -1 skipped),
    `experts`: role -> tensor ([E, R, ...] w13 rows in `arrangement`) -> [T, H] float64.

    `static_input_scales`: for fp8_tensor checkpoints, also round each GEMM's input through FP8 with the
    checkpoint's static `w13_input_scale` (max over its gate/up entries) / `w2_input_scale`, saturating,
    as the model defines them and the Triton kernel computes; the float reference path does not."""
    gate, up, down = dequant_experts(experts, quant, arrangement)
    b13 = experts.get("w13_bias")
    bgate, bup = _split_rows(b13.to(torch.float64), arrangement) if b13 is not None else (None, None)
    b2 = experts.get("w2_bias") if add_w2_bias else None
    static = static_input_scales and quant == "fp8_tensor" and "w13_input_scale" in experts
    if static:
        in13 = experts["w13_input_scale"].to(torch.float64).reshape(up.shape[0], -1).amax(dim=1)    # [E]
        in2 = experts["w2_input_scale"].to(torch.float64).reshape(-1)                               # [E]
    x64, w64, ids = x.to(torch.float64), topk_weights.to(torch.float64), ids.long()
    out = torch.zeros(x.shape[0], down.shape[1], dtype=torch.float64)
    for e in sorted(set(ids.flatten().tolist()) - {-1}):
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        xe = _static_fp8(x64[tok], in13[e]) if static else x64[tok]
        u = xe @ up[e].T + (bup[e] if bup is not None else 0)
        g = None if gate is None else xe @ gate[e].T + (bgate[e] if bgate is not None else 0)
        h = _activation64(g, u, activation)
        y = (_static_fp8(h, in2[e]) if static else h) @ down[e].T
        if b2 is not None:
            y = y + b2[e].to(torch.float64)
        out.index_add_(0, tok, y * w64[tok, slot, None])
    return out


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
