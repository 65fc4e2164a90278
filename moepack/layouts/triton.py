"""The moepack Triton layout: rank-local steps that turn logical expert tensors into what the
Triton fused-MoE kernels (moepack/kernels/triton_*.py) load directly.

Logical (see docs/DESIGN.md) -> stored, per role:

| quant       | role               | steps                                              | stored shape                  |
| ----------- | ------------------ | -------------------------------------------------- | ----------------------------- |
| mxfp4       | w13_weight         | interleave_gate_up (gated), nibble_split(chunk)    | [E, 2Ip, H/2] uint8           |
| mxfp4       | w13_weight_scale   | interleave_gate_up (gated), transpose_last2        | [E, H/32, 2Ip] uint8          |
| mxfp4       | w13_bias           | interleave_gate_up (gated)                         | [E, 2Ip]                      |
| mxfp4       | w2_weight          | nibble_split(chunk)                                | [E, H, Ip/2] uint8            |
| mxfp4       | w2_weight_scale    | transpose_last2                                    | [E, Ip/32, H] uint8           |
| fp8_*       | w13_weight         | interleave_gate_up (gated)                         | [E, 2Ip, H] float8_e4m3fn     |
| anything else                    | (none: stored = logical)                           |                               |

Why:
- `interleave_gate_up`: rows (2j, 2j+1) = (gate_j, up_j). One `tl.dot` over a tile of 2*BN stored rows
  yields gate and up of BN outputs side by side; the accumulator's adjacent column pairs live in one
  thread, so splitting them for the fused activation costs no data movement.
- `nibble_split(chunk)`: inside each chunk of `chunk` K-elements (chunk/2 bytes), byte j holds element j
  in its low nibble and element j + chunk/2 in its high nibble. The kernel then multiplies the low
  nibbles with the first half of the activation chunk and the high nibbles with the second half:
  two plain dots, no in-register interleave of unpacked values. chunk = 64 when K % 64 == 0 (each half
  is then exactly one e8m0 scale group), else 32.
- `transpose_last2` on e8m0 scales: [.., N, K/32] -> [.., K/32, N], so a program's per-K-step scale load
  is contiguous along N (coalesced) instead of one byte per row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import PlanError
from .transform import Transform, register


def mxfp4_k_chunk(k_elements: int) -> int:
    """K-elements per `nibble_split` chunk for a packed-FP4 tensor whose rows hold `k_elements` values."""
    if k_elements % 64 == 0:
        return 64
    if k_elements % 32 == 0:
        return 32
    raise PlanError(f"mxfp4 K={k_elements} is not a multiple of 32")


@register
@dataclass(frozen=True)
class InterleaveGateUp(Transform):
    """[E, 2N, ...] rows [gate; up] -> rows (2j, 2j+1) = (gate_j, up_j). Works on any trailing dims."""

    name = "triton_interleave_gate_up"

    def view_permutation(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(dims, perm): apply(x) is x viewed `dims`, permuted to `perm` (x may be a meta tensor)."""
        E, R = x.shape[0], x.shape[1]
        return (E, 2, R // 2, math.prod(x.shape[2:])), (0, 2, 1, 3)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        E, R = x.shape[0], x.shape[1]
        if R % 2:
            raise PlanError(f"{self.name}: odd row count {R} in {tuple(x.shape)}")
        rest = tuple(x.shape[2:])
        return x.reshape(E, 2, R // 2, *rest).transpose(1, 2).reshape(x.shape).contiguous()

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        E, R = y.shape[0], y.shape[1]
        rest = tuple(y.shape[2:])
        return y.reshape(E, R // 2, 2, *rest).transpose(1, 2).reshape(y.shape).contiguous()


@register
@dataclass(frozen=True)
class NibbleSplit(Transform):
    """[..., K/2] uint8 packed FP4 (element 2i low, 2i+1 high) -> same shape, where inside each chunk of
    `chunk` elements byte j holds element j (low nibble) and element j + chunk/2 (high nibble)."""

    name = "triton_nibble_split"
    chunk: int = 64

    def _check(self, x: torch.Tensor) -> None:
        if x.dtype != torch.uint8 or (2 * x.shape[-1]) % self.chunk:
            raise PlanError(f"{self.name}: needs uint8 with K % {self.chunk} == 0, got {x.dtype} {tuple(x.shape)}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        lead, kb = tuple(x.shape[:-1]), x.shape[-1]
        codes = torch.stack([x & 0x0F, x >> 4], dim=-1).reshape(*lead, kb * 2 // self.chunk, 2, self.chunk // 2)
        out = codes[..., 0, :] | (codes[..., 1, :] << 4)
        return out.reshape(x.shape).contiguous()

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        lead, kb = tuple(y.shape[:-1]), y.shape[-1]
        g = y.reshape(*lead, kb * 2 // self.chunk, self.chunk // 2)
        codes = torch.stack([g & 0x0F, g >> 4], dim=-2).reshape(*lead, kb * 2)
        return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()


@register
@dataclass(frozen=True)
class TransposeLast2(Transform):
    """[..., N, M] -> [..., M, N] (contiguous)."""

    name = "triton_transpose_last2"

    def view_permutation(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(dims, perm): apply(x) is x viewed `dims`, permuted to `perm`, shaped [..., M, N]."""
        return (math.prod(x.shape[:-2]), x.shape[-2], x.shape[-1]), (0, 2, 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2).contiguous()

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        return y.transpose(-1, -2).contiguous()


def triton_local_steps(role: str, quant: str, gated: bool, local_shape: tuple[int, ...]) -> tuple[Transform, ...]:
    """The rank-local steps from the logical tensor of `role` (shape `local_shape`) to the stored Triton layout."""
    steps: list[Transform] = []
    if gated and role in ("w13_weight", "w13_bias") or (gated and quant == "mxfp4" and role == "w13_weight_scale"):
        steps.append(InterleaveGateUp())
    if quant == "mxfp4":
        if role in ("w13_weight", "w2_weight"):
            steps.append(NibbleSplit(chunk=mxfp4_k_chunk(2 * local_shape[-1])))
        elif role in ("w13_weight_scale", "w2_weight_scale"):
            steps.append(TransposeLast2())
    return tuple(steps)


__all__ = ["InterleaveGateUp", "NibbleSplit", "TransposeLast2", "mxfp4_k_chunk", "triton_local_steps"]
