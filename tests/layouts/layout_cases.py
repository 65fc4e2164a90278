"""Shared helpers for the layouts tests: synthetic MoELayerSpecs and random canonical tensors."""
from __future__ import annotations

import torch

from moepack.formats.model import Activation, CanonicalTensor, MoELayerSpec


def make_spec(quant: str, E: int = 4, H: int = 64, I: int = 64, arrangement: str = "separate",
              bias: bool = False, index: int = 0) -> MoELayerSpec:
    """A MoELayerSpec with the canonical shapes of formats/model.py (no source pieces)."""
    gated = arrangement != "up_only"
    R = 2 * I if gated else I
    halves = 2 if gated else 1
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    if quant == "mxfp4":
        shapes = {"w13_weight": ((E, R, H // 2), "uint8"), "w13_weight_scale": ((E, R, H // 32), "uint8"),
                  "w2_weight": ((E, H, I // 2), "uint8"), "w2_weight_scale": ((E, H, I // 32), "uint8")}
        if bias:
            shapes.update({"w13_bias": ((E, R), "bfloat16"), "w2_bias": ((E, H), "bfloat16")})
    elif quant == "fp8_block":
        cb = lambda n: -(-n // 128)  # noqa: E731
        shapes = {"w13_weight": ((E, R, H), "float8_e4m3fn"), "w13_weight_scale": ((E, halves * cb(I), cb(H)), "float32"),
                  "w2_weight": ((E, H, I), "float8_e4m3fn"), "w2_weight_scale": ((E, cb(H), cb(I)), "float32")}
    else:
        shapes = {"w13_weight": ((E, R, H), "float8_e4m3fn"), "w13_weight_scale": ((E, halves), "float32"),
                  "w2_weight": ((E, H, I), "float8_e4m3fn"), "w2_weight_scale": ((E, 1), "float32"),
                  "w13_input_scale": ((E, halves), "float32"), "w2_input_scale": ((E, 1), "float32")}
    tensors = {r: CanonicalTensor(r, s, d, ()) for r, (s, d) in shapes.items()}
    act = Activation("relu2") if not gated else Activation("swiglu_oai", 1.702, 7.0)
    return MoELayerSpec(index, E, H, I, quant, arrangement, act, bias and quant == "mxfp4", tensors)


def random_tensor(shape, dtype, gen: torch.Generator) -> torch.Tensor:
    """Random data of torch dtype (or its name): any bytes for uint8, finite non-NaN e4m3fn bytes
    (-0 included), positive float32 scales, finite bf16."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    shape = tuple(shape)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    if dtype == torch.float8_e4m3fn:
        b = torch.randint(0, 254, shape, dtype=torch.uint8, generator=gen)
        b = b + (b >= 0x7F).to(torch.uint8)          # skip the NaN byte 0x7F; 0xFF is never drawn
        return b.view(torch.float8_e4m3fn)
    if dtype == torch.float32:
        return torch.exp2(torch.randint(-20, 10, shape, generator=gen).float()) * (
            1 + torch.rand(shape, generator=gen)).float()
    if dtype == torch.bfloat16:
        return torch.randn(shape, generator=gen).to(torch.bfloat16)
    raise AssertionError(dtype)


def random_canonical(spec: MoELayerSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {r: random_tensor(ct.shape, ct.dtype, gen) for r, ct in spec.tensors.items()}


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(as_bytes(a), as_bytes(b))
