"""FP8 transforms for AMD gfx942 (MI300X / MI325X), whose FP8 is e4m3fnuz, and exact scale multiplies.

e4m3fn and e4m3fnuz share the bit layout but fnuz has exponent bias 8 instead of 7, no -0 and no
infinities, and its only NaN is 0x80. So for every e4m3fn byte b other than 0x80 (-0) and 0x7F/0xFF
(NaN): value_fnuz(b) = value_fn(b) / 2 exactly. Converting a weight is therefore a bit reinterpretation
with its scale doubled (`ScaleMul(2.0)`), as vLLM / SGLang's `normalize_e4m3fn_to_e4m3fnuz` do.

Choice for -0 (byte 0x80, NaN in fnuz): it becomes +0 (0x00), the same value. fnuz cannot store the
sign of zero, so `invert` returns 0x00 there: the round trip is exact in value everywhere and exact in
bits for every byte but 0x80. The step says so through `canonicalize` (0x80 -> 0x00): for every x,
`invert(apply(x))` is bitwise `canonicalize(x)`; `Chain.canonicalize` applies it to a source tensor so
that `verify` compares like with like. NaN weights (0x7F / 0xFF) would turn into finite +-240, so they
are refused (PlanError).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import PlanError
from .transform import Transform, register

FN_NEG_ZERO = 0x80
FN_NAN = (0x7F, 0xFF)


@register
@dataclass(frozen=True)
class E4m3fnToE4m3fnuz(Transform):
    """[...] float8_e4m3fn -> [...] float8_e4m3fnuz, same bytes except 0x80 -> 0x00 (value halves; see module doc).

    y_byte = 0x00 if x_byte == 0x80 else x_byte;  invert: x_byte = y_byte (0x80 in y is refused)."""

    name = "e4m3fn_to_e4m3fnuz"

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float8_e4m3fn:
            raise PlanError(f"{self.name}: expected float8_e4m3fn, got {x.dtype}")
        b = x.contiguous().view(torch.uint8)
        if b.device.type != "meta" and bool(((b == FN_NAN[0]) | (b == FN_NAN[1])).any()):
            raise PlanError(f"{self.name}: the FP8 weight holds NaN bytes (0x7F/0xFF), which fnuz would read as +-240")
        return torch.where(b == FN_NEG_ZERO, torch.zeros_like(b), b).view(torch.float8_e4m3fnuz)

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        if y.dtype != torch.float8_e4m3fnuz:
            raise PlanError(f"{self.name}: expected float8_e4m3fnuz, got {y.dtype}")
        b = y.contiguous().view(torch.uint8)
        if b.device.type != "meta" and bool((b == FN_NEG_ZERO).any()):
            raise ValueError(f"{self.name}: stored fnuz tensor holds NaN (0x80)")
        return b.view(torch.float8_e4m3fn)

    def canonicalize(self, x: torch.Tensor) -> torch.Tensor:
        """What survives the round trip: x with -0 (0x80) replaced by +0."""
        if x.dtype != torch.float8_e4m3fn:
            return x
        b = x.contiguous().view(torch.uint8)
        return torch.where(b == FN_NEG_ZERO, torch.zeros_like(b), b).view(torch.float8_e4m3fn)


@register
@dataclass(frozen=True)
class ScaleMul(Transform):
    """[...] float scale -> scale * factor, factor a power of two (exact unless it over/underflows,
    which is refused: the result must be finite and, divided back, bitwise the input)."""

    name = "scale_mul"
    factor: float = 2.0

    def _check_factor(self) -> None:
        f = float(self.factor)
        if not (f > 0 and math.isfinite(f) and math.frexp(f)[0] == 0.5):
            raise PlanError(f"{self.name}: factor {self.factor} is not a power of two")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self._check_factor()
        if not x.is_floating_point() or x.element_size() < 2:
            raise PlanError(f"{self.name}: expected a float32/bf16/f16 scale, got {x.dtype}")
        y = x * self.factor
        if x.device.type != "meta":
            back = y / self.factor
            if not bool(torch.isfinite(y[torch.isfinite(x)]).all()) or not torch.equal(
                    back.view(torch.uint8), x.contiguous().view(torch.uint8)):
                raise PlanError(f"{self.name}: scaling by {self.factor} is not exact for this tensor (overflow or underflow)")
        return y

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        self._check_factor()
        return y / self.factor


__all__ = ["E4m3fnToE4m3fnuz", "ScaleMul"]
