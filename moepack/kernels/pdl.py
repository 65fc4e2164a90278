"""Programmatic dependent launch (Hopper and later), the kernel side.

Every kernel of the fused layer launched with `launch_pdl=True` starts with `wait_for_previous_grid`:
it waits until the previous kernel in the stream has finished and its writes are visible, then lets the
next kernel launch as soon as every program of this one has started. Waiting first, before any load or
early return, keeps the chain transitive: a kernel that reads what two launches back wrote is safe
because its predecessor could only finish after its own wait. The launch policy is
`triton_moe.pdl_enabled`.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def wait_for_previous_grid(PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
