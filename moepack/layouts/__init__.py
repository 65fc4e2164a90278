"""Exact, invertible layout transforms and the target registry (see docs/DESIGN.md).

Importing this package registers every transform, so `Chain.from_json` can rebuild any chain.
"""
from . import aiter, flashinfer, fp8, generic  # noqa: F401  (registers the transforms)
from .plan import LayerPlan, RankInfo, plan_layer, rank_local_shapes, stored_shapes
from .targets import TARGETS, Target, get_target, list_targets
from .transform import Chain, Partition, Transform, register, step_from_json

try:  # the kernels' layout module (owned with moepack/kernels)
    from . import triton  # noqa: F401
except ImportError:  # pragma: no cover - FALLBACK while it is missing
    pass

__all__ = [
    "Chain", "Partition", "Transform", "register", "step_from_json",
    "Target", "TARGETS", "get_target", "list_targets",
    "LayerPlan", "RankInfo", "plan_layer", "rank_local_shapes", "stored_shapes",
]
