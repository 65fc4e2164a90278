"""Number formats: MXFP4 (e2m1 + e8m0), FP8 e4m3, and their float decodings.

These are the independent float references every kernel and converter is checked against:
plain table lookups and multiplications, no layout knowledge.

- FP4 e2m1 codes 0..15 -> 0, .5, 1, 1.5, 2, 3, 4, 6, then the same negated (code 8 is -0).
- Packed FP4: two codes per byte, low nibble = even element, high nibble = odd element.
- e8m0 scale byte s -> 2**(s - 127); 255 is NaN. One scale per 32 elements along K.
- FP8 block scales (DeepSeek `weight_scale_inv`) are multipliers: w = q * s[row // 128, col // 128].
"""
from __future__ import annotations

import torch

FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
MX_BLOCK = 32          # elements per e8m0 scale
FP8_BLOCK = 128        # DeepSeek / Qwen3 block-scale tile edge
E8M0_NAN = 255
E8M0_ONE = 127         # the e8m0 code of 1.0: moepack's pad value for e8m0 scales
FP8_E4M3FN_MAX = 448.0
FP8_E4M3FNUZ_MAX = 240.0


def fp4_lut(device=None, dtype=torch.float32) -> torch.Tensor:
    """[16] the e2m1 value of each code."""
    return torch.tensor(FP4_VALUES, dtype=dtype, device=device)


def unpack_fp4(q: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """[..., K/2] uint8 packed e2m1 -> [..., K] `dtype` values (low nibble first)."""
    q = q.view(torch.uint8)
    lut = fp4_lut(q.device, dtype)
    lo = lut[(q & 0x0F).long()]
    hi = lut[(q >> 4).long()]
    return torch.stack([lo, hi], dim=-1).flatten(-2)


def pack_fp4(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] integer codes 0..15 -> [..., K/2] uint8 (even element in the low nibble)."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_fp4 needs an even last dim, got {tuple(codes.shape)}")
    c = codes.to(torch.uint8)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).contiguous()


def e8m0_to_float(s: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """[...] e8m0 codes (any 1-byte dtype; bytes read as codes, never numerically cast) -> 2**(s-127); 255 -> NaN."""
    s = s.view(torch.uint8)
    out = torch.pow(torch.tensor(2.0, dtype=torch.float64, device=s.device), s.to(torch.float64) - 127.0)
    out = torch.where(s == E8M0_NAN, torch.full_like(out, float("nan")), out)
    return out.to(dtype)


def dequant_mxfp4(q: torch.Tensor, s: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """q [..., N, K/2] uint8, s [..., N, K/32] e8m0 -> [..., N, K] `dtype`.

    K may be padded past the scales' reach only if the extra columns are zero bytes; the caller
    passes matching shapes (s.shape[-1] * 32 == 2 * q.shape[-1])."""
    v = unpack_fp4(q, dtype)
    K = v.shape[-1]
    if s.shape[-1] * MX_BLOCK != K:
        raise ValueError(f"mxfp4 scales {tuple(s.shape)} do not cover K={K} in blocks of {MX_BLOCK}")
    scale = e8m0_to_float(s, dtype)
    return (v.unflatten(-1, (-1, MX_BLOCK)) * scale.unsqueeze(-1)).flatten(-2)


def dequant_fp8_block(q: torch.Tensor, s: torch.Tensor, block: int = FP8_BLOCK, dtype=torch.float32) -> torch.Tensor:
    """q [..., N, K] float8_e4m3fn, s [..., ceil(N/b), ceil(K/b)] float -> [..., N, K] `dtype` (w = q * s)."""
    N, K = q.shape[-2], q.shape[-1]
    if s.shape[-2] != -(-N // block) or s.shape[-1] != -(-K // block):
        raise ValueError(f"block scales {tuple(s.shape)} do not tile weight {tuple(q.shape)} in {block}x{block}")
    full = s.to(dtype).repeat_interleave(block, -2)[..., :N, :].repeat_interleave(block, -1)[..., :K]
    return q.to(dtype) * full


def dequant_fp8_tensor(q: torch.Tensor, s: torch.Tensor | float, dtype=torch.float32) -> torch.Tensor:
    """q [...] float8_e4m3fn, s scalar -> q * s in `dtype`."""
    return q.to(dtype) * (s.to(dtype) if isinstance(s, torch.Tensor) else s)


def quantize_fp8_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round x (float) to float8_e4m3fn, round-to-nearest-even, saturating at +-448 (seed 004: never half-up)."""
    return x.to(torch.float32).clamp(-FP8_E4M3FN_MAX, FP8_E4M3FN_MAX).to(torch.float8_e4m3fn)


def nearest_fp4_codes(x: torch.Tensor) -> torch.Tensor:
    """Nearest e2m1 code for each value of x (ties to the even code), for writing example checkpoints."""
    lut = fp4_lut(x.device, torch.float32)[:8]
    mag = x.abs().to(torch.float32).clamp(max=6.0)
    idx = (mag.unsqueeze(-1) - lut).abs().argmin(-1)
    sign = (x < 0).to(torch.long) * 8
    return (idx + sign).to(torch.uint8)
