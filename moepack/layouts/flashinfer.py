"""flashinfer CUTLASS fused MoE, FP8 per-tensor (H100 / H200 = sm90, B200 = sm100).

The layout SGLang's ModelOpt FP8 flashinfer path loads (SGLang #22627):
- intermediate per rank padded to a multiple of 16 (done by the TP partition, each half separately,
  zeros: padded gate/up rows give activation 0 and padded w2 columns multiply zeros);
- w13 rows in the order [up; gate] (`swap_halves` of moepack's logical [gate; up]); the per-half
  w13 scalars ([E, 2] weight scales and input scales) follow the same order, [up, gate];
- not gated (up_only, NemotronH relu2): w13 is the single up block, padded as one block, no swap;
- w2 and every other tensor stored as logical (float8_e4m3fn weights, float32 scalars).
"""
from __future__ import annotations

from ..errors import PlanError
from .generic import SwapHalves
from .transform import Transform

FLASHINFER_ALIGNMENT = 16
_SWAPPED_ROLES = ("w13_weight", "w13_weight_scale", "w13_input_scale", "w13_bias")


def flashinfer_local_steps(role: str, quant: str, gated: bool, local_shape: tuple[int, ...]) -> tuple[Transform, ...]:
    """Rank-local steps from the logical tensor of `role` (shape `local_shape`) to the flashinfer layout."""
    if quant != "fp8_tensor":
        raise PlanError(f"flashinfer-cutlass layouts exist for fp8_tensor only, not {quant}")
    if gated and role in _SWAPPED_ROLES:
        if len(local_shape) < 2 or local_shape[1] % 2:
            raise PlanError(f"flashinfer {role}: gated tensor {tuple(local_shape)} has no two halves on dim 1")
        return (SwapHalves(1),)
    return ()


__all__ = ["FLASHINFER_ALIGNMENT", "flashinfer_local_steps"]
