"""moepack.kernels: the float CPU reference and the Triton fused-MoE kernels.

`reference` needs only torch; `fused_moe` (Triton) is imported lazily so that CPU-only users of the
reference never import triton."""
from .reference import TOLERANCE, LocalExperts, activate, dequantize, moe_reference


def fused_moe(*args, **kwargs):
    """See moepack.kernels.triton_moe.fused_moe."""
    from .triton_moe import fused_moe as _fused_moe
    return _fused_moe(*args, **kwargs)


__all__ = ["TOLERANCE", "LocalExperts", "activate", "dequantize", "fused_moe", "moe_reference"]
