"""The target registry: which (backend, hardware, quant scheme) moepack can write, and how.

A `Target` fixes the rank-local steps of every tensor role (`Target.local_steps`) and the multiple the
per-rank intermediate size is padded to (`alignment`). `plan.plan_layer` adds the global prefix and the
EP/TP partitions in front.

Which quant schemes each backend x hardware supports, and why:
- triton (all six): moepack's own kernels (moepack/kernels) dequantize in software, so mxfp4,
  fp8_block and fp8_tensor run wherever Triton runs (NVIDIA sm90/sm100, AMD gfx942/gfx950). The layout
  does not depend on the hardware. Alignment: mxfp4 64 (two e8m0 groups: the kernel's 64-element
  nibble chunk), fp8_block 128 (one scale block), fp8_tensor 16 (the smallest tl.dot tile).
- aiter (mi300x, mi325x = gfx942; mi355x = gfx950): FP8 (block and per-tensor) on all three; gfx942 has
  no OCP e4m3fn, so weights become e4m3fnuz with doubled scales. mxfp4 only on gfx950, the first AMD
  chip with MXFP4 matrix cores (AITER's a16w4 / FlyDSL fp4 MoE kernels are gfx950 kernels). Two mxfp4
  variants: "interleave" (default: shuffle_weight_a16w4 + shuffle_scale_a16w4, SGLang's default since
  #27201 fixed gpt-oss accuracy at TP>=2; alignment 256 because the w2 scale shuffle needs Ip/32 % 8 == 0)
  and "separated" (shuffle_weight(16, 16) + e8m0_shuffle, what vLLM #42595 uses for DeepSeek-V4;
  alignment 128, SGLang #21097).
- flashinfer-cutlass (h100, h200 = sm90; b200 = sm100): FP8 per-tensor only (SGLang's ModelOpt FP8
  path, #22627: alignment 16, w13 as [up; gate]). flashinfer's block-FP8 and MXFP4 MoE paths use other
  weight layouts (trtllm-gen shuffles) that moepack does not write yet.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import PlanError
from .transform import Transform

ARCH = {"h100": "sm90", "h200": "sm90", "b200": "sm100", "mi300x": "gfx942", "mi325x": "gfx942", "mi355x": "gfx950"}
BACKENDS = ("triton", "aiter", "flashinfer-cutlass")
HARDWARE = tuple(ARCH)
QUANTS = ("mxfp4", "fp8_block", "fp8_tensor")


@dataclass(frozen=True)
class Target:
    backend: str          # "triton" | "aiter" | "flashinfer-cutlass"
    hardware: str         # "h100" | "h200" | "b200" | "mi300x" | "mi325x" | "mi355x"
    arch: str             # "sm90" | "sm100" | "gfx942" | "gfx950"
    quant: str            # "mxfp4" | "fp8_block" | "fp8_tensor"
    alignment: int        # the per-rank intermediate size is padded to a multiple of this
    variant: str = "default"
    description: str = ""
    default: bool = True  # the variant `get_target` picks when none is named

    def local_steps(self, role: str, gated: bool, local_shape: tuple[int, ...], dtype: str) -> tuple[Transform, ...]:
        """Rank-local steps for `role` from its logical form (shape `local_shape`, torch dtype name `dtype`)."""
        if self.backend == "aiter":
            from .aiter import aiter_local_steps
            return aiter_local_steps(role, self.quant, self.arch, self.variant, gated, tuple(local_shape), dtype)
        if self.backend == "flashinfer-cutlass":
            from .flashinfer import flashinfer_local_steps
            return flashinfer_local_steps(role, self.quant, gated, tuple(local_shape))
        try:
            from .triton import triton_local_steps
        except ImportError:  # FALLBACK while the kernels' layout module is missing: stored = logical
            return ()
        return tuple(triton_local_steps(role, self.quant, gated, tuple(local_shape)))

    def hidden_padded(self, hidden: int) -> int:
        """The hidden (K of w13) size this target stores: AITER pads it for its shuffles, others do not."""
        if self.backend == "aiter":
            from .aiter import aiter_hidden_padded
            return aiter_hidden_padded(self.quant, self.variant, hidden)
        return hidden

    def to_json(self) -> dict:
        return {"backend": self.backend, "hardware": self.hardware, "arch": self.arch, "quant": self.quant,
                "variant": self.variant, "alignment": self.alignment, "default": self.default,
                "description": self.description}


def _targets() -> tuple[Target, ...]:
    T = Target
    rows: list[Target] = []
    triton_align = {"mxfp4": 64, "fp8_block": 128, "fp8_tensor": 16}
    for hw in HARDWARE:
        for q in QUANTS:
            rows.append(T("triton", hw, ARCH[hw], q, triton_align[q], "default", "moepack Triton fused MoE"))
    for hw in ("mi300x", "mi325x", "mi355x"):
        fp8 = "e4m3fnuz, scales x2" if ARCH[hw] == "gfx942" else "e4m3fn"
        for q in ("fp8_block", "fp8_tensor"):
            rows.append(T("aiter", hw, ARCH[hw], q, 128, "default", f"AITER fused MoE, shuffle_weight(16,16), {fp8}"))
    rows.append(T("aiter", "mi355x", "gfx950", "mxfp4", 256, "interleave",
                  "AITER a16w4 INTERLEAVE: shuffle_weight_a16w4(16) + shuffle_scale_a16w4 (SGLang #27201)", True))
    rows.append(T("aiter", "mi355x", "gfx950", "mxfp4", 128, "separated",
                  "AITER SEPARATED: shuffle_weight(16,16) + e8m0_shuffle (vLLM #42595, DeepSeek-V4)", False))
    for hw in ("h100", "h200", "b200"):
        rows.append(T("flashinfer-cutlass", hw, ARCH[hw], "fp8_tensor", 16, "default",
                      "flashinfer CUTLASS FP8 per-tensor, w13 [up; gate], pad 16 (SGLang #22627)"))
    return tuple(rows)


TARGETS: tuple[Target, ...] = _targets()


def list_targets() -> list[Target]:
    return list(TARGETS)


def _supported(quant: str | None = None) -> str:
    """'backend: hw, hw (variants); ...' for the targets of `quant` (all quants when None)."""
    groups: dict[str, list[str]] = {}
    for t in TARGETS:
        if quant is not None and t.quant != quant:
            continue
        key = t.backend if quant is not None else f"{t.backend}/{t.quant}"
        hw = t.hardware + ("" if t.variant == "default" else f"[{t.variant}]")
        groups.setdefault(key, [])
        if hw not in groups[key]:
            groups[key].append(hw)
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items()) or "none"


def get_target(backend: str, hardware: str, quant: str, variant: str | None = None) -> Target:
    """The target for (backend, hardware, quant); `variant` None picks the default one.
    Unsupported -> PlanError listing every supported combination."""
    hits = [t for t in TARGETS if (t.backend, t.hardware, t.quant) == (backend, hardware.lower(), quant)]
    if variant is None:
        hits = [t for t in hits if t.default]
    else:
        hits = [t for t in hits if t.variant == variant]
    if not hits:
        v = f" variant {variant!r}" if variant else ""
        raise PlanError(f"unsupported target --backend {backend} --hardware {hardware} for {quant}{v}; "
                        f"supported for {quant}: {_supported(quant)} (see `moepack targets`)")
    return hits[0]


def describe_targets(tp: int = 2) -> list[dict]:
    """Every target as JSON, with the w13_weight chain it gives a gated, [gate; up]-separate source at `tp`
    (E=8, H=512, I=1024: sizes every target accepts) — what `moepack targets` lists."""
    from ..formats.model import Activation, CanonicalTensor, MoELayerSpec
    from .plan import plan_layer

    E, H, I = 8, 512, 1024
    rows = []
    for t in TARGETS:
        kst = H // 2 if t.quant == "mxfp4" else H
        dtype = "uint8" if t.quant == "mxfp4" else "float8_e4m3fn"
        ct = CanonicalTensor("w13_weight", (E, 2 * I, kst), dtype, ())
        spec = MoELayerSpec(0, E, H, I, t.quant, "separate", Activation("silu"), False, {"w13_weight": ct})
        chain = plan_layer(spec, t, tp, 1).chains["w13_weight"]
        rows.append(t.to_json() | {"chain": chain.describe(), "steps": [s.name for s in chain.steps]})
    return rows


__all__ = ["describe_targets", "ARCH", "BACKENDS", "HARDWARE", "QUANTS", "Target", "TARGETS", "get_target", "list_targets"]
