"""An independent float64 MoE layer, straight from a layer's expert tensors in their SOURCE arrangement.

This is the yardstick every kernel and every converted layout is held to (`verify --level numeric`,
`moepack run`, the runtime tests). It reads no layout: weights are dequantized with `moepack.numerics`
in float64, the w13 rows are split by the arrangement the tensors carry (`interleaved`, `separate`,
`up_only`), the activation is written out from `Activation`'s definition:

    out[t] = sum_j w[t, j] * (act(x[t] @ W13[e].T + b13[e]) @ W2[e].T + b2[e]),   e = ids[t, j]  (-1: skipped)

It shares no code with `moepack.kernels.reference` (the float32 reader of rank-local layouts) nor with
the Triton kernels, so agreement between them means something.
"""
from __future__ import annotations

import torch

from ..formats.model import Activation
from ..numerics import FP8_BLOCK, dequant_fp8_block, dequant_mxfp4, quantize_fp8_e4m3



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
