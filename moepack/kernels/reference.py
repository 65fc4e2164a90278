"""Float CPU reference of one rank's fused MoE, over rank-local LOGICAL tensors (`Chain.invert_local`).

    out[t] = sum_j w[t, j] * (act(x[t] @ w13[e].T + b13[e]) @ w2[e].T + b2[e]),   e = topk_ids[t, j]

with e = -1 (an expert not on this rank) contributing nothing. Weights are dequantized with
moepack.numerics; activations are NOT quantized here, even for the fp8 schemes whose kernels quantize
them. The kernels are checked against this (and against float64 computations in the tests) by the
relative Frobenius error ||out - ref|| / ||ref|| within `TOLERANCE[quant]` for bf16 activations:

| quant      | tolerance | what it covers                                                        |
| ---------- | --------- | --------------------------------------------------------------------- |
| mxfp4      | 2e-2      | bf16 activations and bf16 intermediate (2^-8 per element), fp32 accumulation |
| fp8_block  | 6e-2      | activations and intermediate quantized to e4m3 per 128-group (2^-4 per element) |
| fp8_tensor | 8e-2      | e4m3 activations with one static scale per expert (coarser than per group) |

With fp16/fp32 activations (the CPU interpreter tests) the mxfp4 error is ~1e-3 or below.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..formats.model import Activation
from ..numerics import FP8_BLOCK, dequant_fp8_block, dequant_fp8_tensor, dequant_mxfp4

TOLERANCE = {"mxfp4": 2e-2, "fp8_block": 6e-2, "fp8_tensor": 8e-2}


@dataclass
class LocalExperts:
    """One rank's experts in logical form.

    w13 [E_l, 2*Ip, Kst] rows [gate; up] ([E_l, Ip, Kst] when not gated); w2 [E_l, H, Ip (/2 packed fp4)].
    mxfp4 scales: uint8 e8m0 [.., rows, K/32]. fp8_block scales: float32 [E_l, 2*ceil(Ip/128), ceil(H/128)]
    (gate blocks then up blocks) and [E_l, ceil(H/128), ceil(Ip/128)]. fp8_tensor: w13_scale [E_l, S],
    w2_scale [E_l, 1], input scales likewise. Biases [E_l, 2*Ip] / [E_l, H]."""

    quant: str
    activation: Activation
    gated: bool
    w13: torch.Tensor
    w13_scale: torch.Tensor
    w2: torch.Tensor
    w2_scale: torch.Tensor
    w13_bias: torch.Tensor | None = None
    w2_bias: torch.Tensor | None = None
    w13_input_scale: torch.Tensor | None = None
    w2_input_scale: torch.Tensor | None = None

    @property
    def num_experts(self) -> int:
        return self.w13.shape[0]

    @property
    def intermediate(self) -> int:
        """Ip, the padded intermediate size per rank."""
        return self.w13.shape[1] // 2 if self.gated else self.w13.shape[1]


def _dequant_w13_block(w13: torch.Tensor, s: torch.Tensor, gated: bool, dtype) -> torch.Tensor:
    if not gated:
        return dequant_fp8_block(w13, s, dtype=dtype)
    ip = w13.shape[1] // 2
    nb = -(-ip // FP8_BLOCK)
    return torch.cat([dequant_fp8_block(w13[:, :ip], s[:, :nb], dtype=dtype),
                      dequant_fp8_block(w13[:, ip:], s[:, nb:], dtype=dtype)], dim=1)


def dequantize(local: LocalExperts, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (w13 [E_l, R, H], w2 [E_l, H, Ip]) in `dtype`."""
    if local.quant == "mxfp4":
        return dequant_mxfp4(local.w13, local.w13_scale, dtype), dequant_mxfp4(local.w2, local.w2_scale, dtype)
    if local.quant == "fp8_block":
        return (_dequant_w13_block(local.w13, local.w13_scale, local.gated, dtype),
                dequant_fp8_block(local.w2, local.w2_scale, dtype=dtype))
    if local.quant == "fp8_tensor":
        s13 = local.w13_scale.to(dtype)
        rows = local.w13.shape[1]
        per_row = s13.repeat_interleave(rows // s13.shape[1], dim=1)      # [E, R]: gate scalars then up scalars
        w13 = dequant_fp8_tensor(local.w13, 1.0, dtype) * per_row[:, :, None]
        w2 = dequant_fp8_tensor(local.w2, 1.0, dtype) * local.w2_scale.to(dtype).reshape(-1, 1, 1)
        return w13, w2
    raise ValueError(f"unknown quant scheme {local.quant!r}")


def activate(h: torch.Tensor, act: Activation, gated: bool) -> torch.Tensor:
    """h [T, R] (rows [gate; up] when gated) -> [T, Ip], per `Activation`'s definition."""
    if act.kind == "relu2":
        return torch.relu(h) ** 2
    ip = h.shape[-1] // 2
    gate, up = h[..., :ip], h[..., ip:]
    if act.kind == "swiglu_oai":
        if act.limit is not None:
            gate = gate.clamp(max=act.limit)
            up = up.clamp(-act.limit, act.limit)
        alpha = 1.0 if act.alpha is None else act.alpha
        return gate * torch.sigmoid(alpha * gate) * (up + 1)
    if act.kind == "silu":
        if act.limit is not None:
            gate = gate.clamp(max=act.limit)
            up = up.clamp(-act.limit, act.limit)
        return torch.nn.functional.silu(gate) * up
    raise ValueError(f"unknown activation {act.kind!r}")


def moe_reference(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, local: LocalExperts,
                  add_w2_bias: bool = True, dtype=torch.float32) -> torch.Tensor:
    """x [T, H], topk_weights [T, k] float32, topk_ids [T, k] int32 local ids (-1 = skip) -> [T, H] `dtype`."""
    w13, w2 = dequantize(local, dtype)
    xf = x.to(dtype)
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=dtype)
    for e in torch.unique(topk_ids).tolist():
        if e < 0:
            continue
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)
        h = xf[tok] @ w13[e].T
        if local.w13_bias is not None:
            h = h + local.w13_bias[e].to(dtype)
        y = activate(h, local.activation, local.gated) @ w2[e].T
        if add_w2_bias and local.w2_bias is not None:
            y = y + local.w2_bias[e].to(dtype)
        out.index_add_(0, tok, y * topk_weights[tok, slot].to(dtype)[:, None])
    return out
