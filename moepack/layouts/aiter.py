"""AMD AITER layouts (MI300X / MI325X = gfx942, MI355X = gfx950): the weight and scale shuffles.

Each shuffle is AITER's own definition (ROCm/aiter aiter/ops/shuffle.py `shuffle_weight`,
`shuffle_weight_a16w4`, `shuffle_scale_a16w4`; aiter/utility/fp4_utils.py `e8m0_shuffle`): a row-major
view into tiles, a permutation of the tile axes, a view back. The docstrings give the index mapping
as a formula: source index digits -> the order of those digits in the output's row-major flat index.
All are pure permutations (the e8m0 one after padding), so `invert` is the inverse permutation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import PlanError
from .generic import check_pad, filled, new_buffer
from .transform import Transform, register


def _wide(x: torch.Tensor, dims: tuple[int, ...], inner_kept: bool) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Contiguous `x` as the widest integer-like dtype whose items lie inside its innermost axis of `dims`
    when that axis stays innermost (a permutation then moves 16- or 8-byte items, not bytes), with `dims`
    rescaled to it. complex128 / int64 copies move bits unchanged (no float arithmetic), so this is exact."""
    flat = x.contiguous().reshape(-1).view(torch.uint8)
    inner = dims[-1] * x.element_size()
    if inner_kept:
        for dt in (torch.complex128, torch.int64, torch.int32, torch.int16):
            w = dt.itemsize
            if inner % w == 0 and flat.data_ptr() % w == 0:
                return flat.view(dt), tuple(dims[:-1]) + (inner // w,)
    return flat, tuple(dims[:-1]) + (inner,)


def _permuted(x: torch.Tensor, dims: tuple[int, ...], perm: tuple[int, ...]) -> torch.Tensor:
    """x viewed as `dims`, permuted to `perm`, made contiguous, viewed back to x's shape."""
    w, wdims = _wide(x, dims, perm[-1] == len(dims) - 1)
    src = w.view(wdims).permute(perm)
    out = new_buffer(src.shape, src.dtype, src.device).copy_(src)
    return out.view(-1).view(torch.uint8).view(x.dtype).view(x.shape)


def _unpermuted(y: torch.Tensor, dims: tuple[int, ...], perm: tuple[int, ...]) -> torch.Tensor:
    """The inverse of `_permuted(., dims, perm)`."""
    inv = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
    return _permuted(y, tuple(dims[p] for p in perm), inv)


def _need(cond: bool, who: str, what: str, x: torch.Tensor) -> None:
    if not cond:
        raise PlanError(f"{who}: needs {what}, got {x.dtype} {tuple(x.shape)}")


class _SameShapePermutation(Transform):
    """A shuffle that keeps the shape: `view_permutation(x)` -> (dims, perm) says x is viewed as `dims` and
    permuted to `perm`; apply and invert follow from it (and convert's one-pass writer reads it too)."""

    def view_permutation(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return _permuted(x, *self.view_permutation(x))

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        return _unpermuted(y, *self.view_permutation(y))


@register
@dataclass(frozen=True)
class AiterShuffleWeight(_SameShapePermutation):
    """AITER `shuffle_weight(x, layout)` (default, non-interleaved path): [..., N, K] -> same shape.

    IN, IK = layout; BK = 2*IK storage units; V = 16 / elem_bytes (16-byte vectors: 8 bf16, 16 fp8 or
    packed-fp4 bytes). Needs N % IN == 0, K % BK == 0. Writing n = IN*n1 + n2, k = BK*k1 + V*k2 + k3:
      x[b, n, k] -> position (b, n1, k1, k2, n2, k3) of y viewed as [B, N/IN, K/BK, BK/V, IN, V].
    (x viewed [B, N/IN, IN, K/BK, BK/V, V], permuted (0, 1, 3, 4, 2, 5).)"""

    name = "aiter_shuffle_weight"
    layout: tuple[int, int] = (16, 16)
    elem_bytes: int = 1

    def view_permutation(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(dims, perm): apply(x) is x viewed `dims`, permuted to `perm`, laid out row-major in x's shape
        (x may be a meta tensor: only its shape and dtype are read)."""
        IN, IK = self.layout
        BK, V = 2 * IK, 16 // self.elem_bytes
        _need(x.dim() >= 2 and x.element_size() == self.elem_bytes, self.name,
              f"a tensor of {self.elem_bytes}-byte elements with >= 2 dims", x)
        N, K = x.shape[-2], x.shape[-1]
        _need(N % IN == 0 and K % BK == 0 and BK % V == 0, self.name, f"N % {IN} == 0 and K % {BK} == 0", x)
        B = math.prod(x.shape[:-2])
        return (B, N // IN, IN, K // BK, BK // V, V), (0, 1, 3, 4, 2, 5)


@register
@dataclass(frozen=True)
class AiterE8m0Shuffle(Transform):
    """AITER `e8m0_shuffle` (SEPARATED path) of an e8m0 scale of `shape` [..., n] -> [sm, sn] (2-D, padded).

    The scale is viewed 2-D [m, n] with m = prod(shape[:-1]) (MoE: [E*rows, K/32]), padded to
    sm = ceil(m/256)*256, sn = ceil(n/8)*8 with `pad_value` (upstream leaves it uninitialised; moepack
    writes 127 = 1.0), then for i = 32*a + 16*b + c, j = 8*d + 4*e + f:
      p[i, j] -> position (a, d, f, c, e, b) of y viewed as [sm/32, sn/8, 4, 16, 2, 2].
    (p viewed [sm/32, 2, 16, sn/8, 2, 4], permuted (0, 3, 5, 2, 4, 1).) `invert` removes the padding."""

    name = "aiter_e8m0_shuffle"
    shape: tuple[int, ...] = ()
    pad_value: int = 127

    def _sizes(self) -> tuple[int, int, int, int]:
        if len(self.shape) < 1:
            raise PlanError(f"{self.name}: needs the scale's shape as a parameter")
        m, n = math.prod(self.shape[:-1]), self.shape[-1]
        return m, n, -(-m // 256) * 256, -(-n // 8) * 8

    def padded_view_permutation(self) -> tuple[tuple[int, int], tuple[int, ...], tuple[int, ...]]:
        """((sm, sn), dims, perm): apply(x) is x padded to [sm, sn], viewed `dims`, permuted to `perm`."""
        m, n, sm, sn = self._sizes()
        return (sm, sn), (sm // 32, 2, 16, sn // 8, 2, 4), (0, 3, 5, 2, 4, 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        m, n, sm, sn = self._sizes()
        _need(tuple(x.shape) == tuple(self.shape) and x.element_size() == 1, self.name,
              f"a 1-byte scale of shape {tuple(self.shape)}", x)
        p = filled((sm, sn), self.pad_value, x)
        p[:m, :n] = x.reshape(m, n)
        return _permuted(p, *self.padded_view_permutation()[1:])

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        m, n, sm, sn = self._sizes()
        _need(tuple(y.shape) == (sm, sn), self.name, f"shape {(sm, sn)}", y)
        p = _unpermuted(y, *self.padded_view_permutation()[1:])
        check_pad(p[m:, :], self.pad_value, self.name)
        check_pad(p[:m, n:], self.pad_value, self.name)
        return p[:m, :n].contiguous().view(tuple(self.shape))


@register
@dataclass(frozen=True)
class AiterShuffleWeightA16w4(_SameShapePermutation):
    """AITER `shuffle_weight_a16w4(w, nlane, gate_up)` (INTERLEAVE path) of packed FP4 [E, N, Kb] uint8 -> same shape.

    KPack = 16 bytes, KLane = 64 / nlane; K0 = Kb / (KLane*KPack); k = KLane*KPack*k0 + KPack*kl + kp.
      gate_up (rows [gate; up], Nh = N/2, N0 = Nh/nlane, row = h*Nh + nlane*n0 + nl):
        x[e, row, k] -> position (e, n0, h, k0, kl, nl, kp) of y viewed [E, N0, 2, K0, KLane, nlane, KPack]
      not gate_up (N0 = N/nlane, row = nlane*n0 + nl):
        x[e, row, k] -> position (e, n0, k0, kl, nl, kp) of y viewed [E, N0, K0, KLane, nlane, KPack]
    So each N0 tile holds its gate rows then its up rows."""

    name = "aiter_shuffle_weight_a16w4"
    nlane: int = 16
    gate_up: bool = False

    def view_permutation(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(dims, perm): apply(x) is x viewed `dims`, permuted to `perm` (x may be a meta tensor)."""
        KPack = 16
        _need(x.dim() == 3 and x.element_size() == 1 and 64 % self.nlane == 0, self.name,
              f"[E, N, K/2] bytes (nlane {self.nlane} dividing 64)", x)
        KLane = 64 // self.nlane
        E, N, Kb = x.shape
        halves = 2 if self.gate_up else 1
        _need(N % (halves * self.nlane) == 0 and Kb % (KLane * KPack) == 0, self.name,
              f"N % {halves * self.nlane} == 0 and K/2 % {KLane * KPack} == 0", x)
        N0, K0 = N // halves // self.nlane, Kb // (KLane * KPack)
        if self.gate_up:
            return (E, 2, N0, self.nlane, K0, KLane, KPack), (0, 2, 1, 4, 5, 3, 6)
        return (E, N0, self.nlane, K0, KLane, KPack), (0, 1, 3, 4, 2, 5)


@register
@dataclass(frozen=True)
class AiterShuffleScaleA16w4(_SameShapePermutation):
    """AITER `shuffle_scale_a16w4(s, experts, gate_up)` (INTERLEAVE path) of e8m0 scales -> same shape.

    s is [experts, n, k] or [experts*n, k] (n rows per expert, k = K/32); needs n % 32 == 0, k % 8 == 0.
    N1 = n/32, K1 = k/8; col = 8*k1 + 4*kp + kl.
      gate_up (row = h*(n/2) + 16*n1 + nl, h = gate/up half):
        s[e, row, col] -> position (e, n1, k1, kl, nl, kp, h) of y viewed [E, N1, K1, 4, 16, 2, 2]
      not gate_up (row = 32*n1 + 16*np + nl):
        s[e, row, col] -> position (e, n1, k1, kl, nl, kp, np) of y viewed [E, N1, K1, 4, 16, 2, 2]"""

    name = "aiter_shuffle_scale_a16w4"
    experts: int = 1
    gate_up: bool = False

    def view_permutation(self, x: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(dims, perm): apply(x) is x viewed `dims`, permuted to `perm` (x may be a meta tensor)."""
        _need(x.dim() in (2, 3) and x.element_size() == 1 and x.shape[0] % self.experts == 0
              and (x.dim() == 2 or x.shape[0] == self.experts), self.name,
              f"an e8m0 scale [{self.experts}, n, k] or [{self.experts}*n, k]", x)
        n = x.shape[-2] if x.dim() == 3 else x.shape[0] // self.experts
        k = x.shape[-1]
        _need(n % 32 == 0 and k % 8 == 0, self.name, "rows per expert % 32 == 0 and k % 8 == 0", x)
        N1, K1 = n // 32, k // 8
        if self.gate_up:
            return (self.experts, 2, N1, 16, K1, 2, 4), (0, 2, 4, 6, 3, 5, 1)
        return (self.experts, N1, 2, 16, K1, 2, 4), (0, 1, 4, 6, 3, 5, 2)


__all__ = ["AiterShuffleWeight", "AiterE8m0Shuffle", "AiterShuffleWeightA16w4", "AiterShuffleScaleA16w4"]


# ----------------------------------------------------------------------------- AITER rank-local chains

def aiter_hidden_padded(quant: str, variant: str, hidden: int) -> int:
    """The K (hidden) size AITER's w13 shuffles need, in elements: the INTERLEAVE scale shuffle needs
    K/32 % 8 == 0 (K % 256), `shuffle_weight(16, 16)` needs K bytes % 32 (mxfp4: K % 64; fp8: K % 32)."""
    multiple = (256 if variant == "interleave" else 64) if quant == "mxfp4" else 32
    return -(-hidden // multiple) * multiple


def aiter_local_steps(role: str, quant: str, arch: str, variant: str, gated: bool,
                      local_shape: tuple[int, ...], dtype: str) -> tuple[Transform, ...]:
    """Rank-local steps from the logical tensor of `role` (shape `local_shape`, torch dtype name `dtype`)
    to what AITER's fused MoE reads on `arch` (gfx942: e4m3fnuz; gfx950: e4m3fn and MXFP4).

    mxfp4 "interleave" (SGLang #27201 default): shuffle_weight_a16w4(16, gate_up) + shuffle_scale_a16w4.
    mxfp4 "separated" (vLLM #42595, DeepSeek-V4): shuffle_weight(16, 16) + e8m0_shuffle.
    fp8: e4m3fn_to_e4m3fnuz + scales x2 on gfx942, then shuffle_weight(16, 16); scales otherwise as is.
    Biases become float32. w13's K dim is zero-padded (scales: 127) to `aiter_hidden_padded` if needed."""
    from .fp8 import E4m3fnToE4m3fnuz, ScaleMul
    from .generic import CastDtype, Pad

    steps: list[Transform] = []
    if role.endswith("_bias"):
        return (CastDtype(dtype, "float32"),) if dtype != "float32" else ()
    if quant == "mxfp4":
        interleave = variant == "interleave"
        E_l = local_shape[0]
        if role == "w13_weight":
            H = 2 * local_shape[-1]
            Hp = aiter_hidden_padded(quant, variant, H)
            if Hp != H:
                steps.append(Pad(dim=-1, from_size=H // 2, to_size=Hp // 2))
            steps.append(AiterShuffleWeightA16w4(16, gated) if interleave else AiterShuffleWeight((16, 16), 1))
        elif role == "w13_weight_scale":
            k = local_shape[-1]
            Hp = aiter_hidden_padded(quant, variant, 32 * k)
            if Hp != 32 * k:
                steps.append(Pad(dim=-1, from_size=k, to_size=Hp // 32, value=127))
            padded_shape = tuple(local_shape[:-1]) + (Hp // 32,)
            steps.append(AiterShuffleScaleA16w4(E_l, gated) if interleave else AiterE8m0Shuffle(padded_shape, 127))
        elif role == "w2_weight":
            steps.append(AiterShuffleWeightA16w4(16, False) if interleave else AiterShuffleWeight((16, 16), 1))
        elif role == "w2_weight_scale":
            steps.append(AiterShuffleScaleA16w4(E_l, False) if interleave else AiterE8m0Shuffle(tuple(local_shape), 127))
        return tuple(steps)
    fnuz = arch == "gfx942"
    if role in ("w13_weight", "w2_weight"):
        if fnuz:
            steps.append(E4m3fnToE4m3fnuz())
        if role == "w13_weight":
            H = local_shape[-1]
            Hp = aiter_hidden_padded(quant, variant, H)
            if Hp != H:
                steps.append(Pad(dim=-1, from_size=H, to_size=Hp))
        steps.append(AiterShuffleWeight((16, 16), 1))
    elif fnuz:   # weight scales and input scales: the fnuz bytes mean half, so every scale doubles
        steps.append(ScaleMul(2.0))
    return tuple(steps)


__all__ += ["aiter_hidden_padded", "aiter_local_steps"]
