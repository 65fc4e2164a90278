"""Random MoE cases for the kernel tests, and an independent float64 computation of the layer.

`make_case` draws logical rank-local tensors (the contract of docs/DESIGN.md), the stored Triton
layout (through `triton_local_steps`), routing with some -1 ids. `expected64` decodes the weights
with its own tables (not moepack.numerics) and sums token by token, slot by slot, in float64.
"""
from __future__ import annotations

import torch

from moepack.formats.model import Activation
from moepack.kernels.reference import LocalExperts
from moepack.layouts.transform import Chain
from moepack.layouts.triton import triton_local_steps

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]

CASES = {
    # name: (quant, activation, gated, has_bias, T, E, k, H, Ip)
    "mxfp4_swiglu_bias": ("mxfp4", Activation("swiglu_oai", alpha=1.702, limit=7.0), True, True, 7, 4, 2, 128, 64),
    "mxfp4_silu_limit_chunk32": ("mxfp4", Activation("silu", limit=10.0), True, False, 5, 3, 2, 96, 96),
    # w13 [3, 192, 96 bytes] in mma tiles (192 rows: a partial 128-row tile), w2 (K = 96) nibble-split only
    "mxfp4_tiles_w13_only": ("mxfp4", Activation("swiglu_oai", alpha=1.702, limit=7.0), True, True, 6, 3, 2, 192, 96),
    "fp8_block_silu": ("fp8_block", Activation("silu"), True, False, 6, 4, 2, 192, 160),
    "fp8_tensor_relu2": ("fp8_tensor", Activation("relu2"), False, False, 6, 4, 2, 64, 48),
    "fp8_tensor_silu": ("fp8_tensor", Activation("silu"), True, False, 5, 3, 3, 64, 32),
}


def _fp4_value(code: int) -> float:
    return (-1.0 if code & 8 else 1.0) * E2M1[code & 7]


def _decode_fp4_row(packed: torch.Tensor) -> torch.Tensor:
    vals = []
    for b in packed.tolist():
        vals += [_fp4_value(b & 15), _fp4_value(b >> 4)]
    return torch.tensor(vals, dtype=torch.float64)


def dense_weights64(local: LocalExperts) -> tuple[torch.Tensor, torch.Tensor]:
    """(w13 [E, R, H], w2 [E, H, Ip]) float64, decoded here independently of moepack.numerics."""
    def mx(q, s):
        E, N, kb = q.shape
        out = torch.empty(E, N, 2 * kb, dtype=torch.float64)
        for e in range(E):
            for n in range(N):
                scale = torch.tensor([2.0 ** (int(c) - 127) for c in s[e, n].tolist()], dtype=torch.float64)
                out[e, n] = _decode_fp4_row(q[e, n]) * scale.repeat_interleave(32)
        return out

    def block(q, s, rows_per_half):
        w = q.to(torch.float64)
        out = torch.empty_like(w)
        halves = w.shape[1] // rows_per_half
        nb = -(-rows_per_half // 128)
        for hf in range(halves):
            for r in range(rows_per_half):
                row = hf * rows_per_half + r
                cols = torch.arange(w.shape[2]) // 128
                out[:, row] = w[:, row] * s[:, hf * nb + r // 128][:, cols].to(torch.float64)
        return out

    if local.quant == "mxfp4":
        return mx(local.w13, local.w13_scale), mx(local.w2, local.w2_scale)
    ip = local.intermediate
    if local.quant == "fp8_block":
        return block(local.w13, local.w13_scale, ip), block(local.w2, local.w2_scale, local.w2.shape[1])
    s13 = local.w13_scale.to(torch.float64)
    w13 = local.w13.to(torch.float64).clone()
    w13[:, :ip] *= s13[:, 0, None, None]
    if local.gated:
        w13[:, ip:] *= s13[:, 1, None, None]
    return w13, local.w2.to(torch.float64) * local.w2_scale.to(torch.float64)[:, 0, None, None]


def _act64(h: torch.Tensor, act: Activation, gated: bool) -> torch.Tensor:
    if not gated:
        return torch.clamp(h, min=0) ** 2
    ip = h.shape[0] // 2
    g, u = h[:ip], h[ip:]
    if act.limit is not None:
        g, u = torch.clamp(g, max=act.limit), torch.clamp(u, -act.limit, act.limit)
    if act.kind == "swiglu_oai":
        return g / (1 + torch.exp(-act.alpha * g)) * (u + 1)
    return g / (1 + torch.exp(-g)) * u


def _e4m3_round(v: torch.Tensor) -> torch.Tensor:
    """float64 -> nearest e4m3fn value (ties to the even code), saturating at 448, by table search."""
    pos = torch.arange(127, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float64)   # codes 0..126 ascending
    mag = v.abs().clamp(max=448.0)
    hi = torch.searchsorted(pos, mag).clamp(1, 126)
    lo = hi - 1
    d_lo, d_hi = mag - pos[lo], pos[hi] - mag
    code = torch.where(d_lo < d_hi, lo, torch.where(d_hi < d_lo, hi, torch.where(hi % 2 == 0, hi, lo)))
    return torch.sign(v) * pos[code]


def quant_emulated(a: torch.Tensor, scheme: str, in_scale: float | None = None) -> torch.Tensor:
    """What the fp8 kernels do to an activation row vector a [K]: per-128-group or static-scale e4m3."""
    if scheme == "tensor":
        return _e4m3_round(a / in_scale) * in_scale
    out = a.clone()
    for k0 in range(0, a.shape[-1], 128):
        blk = a[k0:k0 + 128]
        s = float(max(blk.abs().max(), 1e-10)) / 448
        s = float(torch.tensor(s, dtype=torch.float32))
        out[k0:k0 + 128] = _e4m3_round(blk / s) * s
    return out


def _scalar(t, e):
    return None if t is None else float(t[e].max())


def expected64(x, topk_weights, topk_ids, local: LocalExperts, add_w2_bias=True, emulate_quant=False):
    """[T, H] float64, token by token. `emulate_quant`: quantize activations as the fp8 kernels do."""
    w13, w2 = dense_weights64(local)
    scheme = {"fp8_block": "group", "fp8_tensor": "tensor"}.get(local.quant) if emulate_quant else None
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            if e < 0:
                continue
            a = x[t].to(torch.float64)
            if scheme:
                a = quant_emulated(a, scheme, _scalar(local.w13_input_scale, e))
            h = w13[e] @ a
            if local.w13_bias is not None:
                h = h + local.w13_bias[e].to(torch.float64)
            h = _act64(h, local.activation, local.gated)
            if scheme:
                h = quant_emulated(h, scheme, _scalar(local.w2_input_scale, e))
            y = w2[e] @ h
            if add_w2_bias and local.w2_bias is not None:
                y = y + local.w2_bias[e].to(torch.float64)
            out[t] += float(topk_weights[t, j]) * y
    return out


def _rand_fp8(shape, g, scale=1.0):
    return (torch.randn(shape, generator=g) * scale).clamp(-448, 448).to(torch.float8_e4m3fn)


def make_case(name: str, seed: int = 0, x_dtype=torch.float32, Ip: int | None = None, H: int | None = None,
              T: int | None = None):
    """-> (x, topk_weights, topk_ids, local LocalExperts, stored dict role -> tensor, meta dict);
    Ip, H, T: another intermediate size, hidden size, token count than the case's."""
    quant, act, gated, has_bias, case_t, E, k, case_h, case_ip = CASES[name]
    Ip, H, T = Ip or case_ip, H or case_h, T or case_t
    g = torch.Generator().manual_seed(seed)
    R = 2 * Ip if gated else Ip
    kw = {}
    if quant == "mxfp4":
        kw["w13"] = torch.randint(0, 256, (E, R, H // 2), generator=g, dtype=torch.int32).to(torch.uint8)
        kw["w13_scale"] = torch.randint(120, 126, (E, R, H // 32), generator=g, dtype=torch.int32).to(torch.uint8)
        kw["w2"] = torch.randint(0, 256, (E, H, Ip // 2), generator=g, dtype=torch.int32).to(torch.uint8)
        kw["w2_scale"] = torch.randint(120, 126, (E, H, Ip // 32), generator=g, dtype=torch.int32).to(torch.uint8)
        if has_bias:
            kw["w13_bias"] = (torch.randn(E, R, generator=g) * 0.5).to(torch.bfloat16)
            kw["w2_bias"] = (torch.randn(E, H, generator=g) * 0.5).to(torch.bfloat16)
    elif quant == "fp8_block":
        nb = -(-Ip // 128)
        kw["w13"] = _rand_fp8((E, R, H), g, 8.0)
        kw["w13_scale"] = torch.rand(E, 2 * nb, -(-H // 128), generator=g) * 0.02 + 0.005
        kw["w2"] = _rand_fp8((E, H, Ip), g, 8.0)
        kw["w2_scale"] = torch.rand(E, -(-H // 128), nb, generator=g) * 0.02 + 0.005
    else:
        S = 2 if gated else 1
        kw["w13"] = _rand_fp8((E, R, H), g, 8.0)
        kw["w13_scale"] = torch.rand(E, S, generator=g) * 0.02 + 0.005
        kw["w2"] = _rand_fp8((E, H, Ip), g, 8.0)
        kw["w2_scale"] = torch.rand(E, 1, generator=g) * 0.02 + 0.005
    x = torch.randn(T, H, generator=g).to(x_dtype)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(torch.int32)
    ids[1, 0] = -1                      # an expert on another rank
    tw = torch.rand(T, k, generator=g)
    local = LocalExperts(quant=quant, activation=act, gated=gated, **kw)
    if quant == "fp8_tensor":
        S = 2 if gated else 1
        local.w13_input_scale = (x.abs().max().float() / 448 * 1.05).expand(E, S).clone()
        w13, _ = dense_weights64(local)
        inter = torch.stack([_act64(w13[e] @ x.T.to(torch.float64), act, gated) for e in range(E)])
        local.w2_input_scale = (inter.abs().amax(dim=(1, 2)) / 448 * 1.05).float().reshape(E, 1)
    logical = {"w13_weight": local.w13, "w13_weight_scale": local.w13_scale, "w13_bias": local.w13_bias,
               "w2_weight": local.w2, "w2_weight_scale": local.w2_scale, "w2_bias": local.w2_bias,
               "w13_input_scale": local.w13_input_scale, "w2_input_scale": local.w2_input_scale}
    stored = {role: Chain(triton_local_steps(role, quant, gated, tuple(t.shape))).apply_local(t)
              for role, t in logical.items() if t is not None}
    meta = dict(quant=quant, activation=act, gated=gated, E_l=E, H=H, Ip=Ip, add_w2_bias=True)
    return x, tw, ids, local, stored, meta


def to_device(stored: dict, dev) -> dict:
    """The stored tensors of a case on device `dev`."""
    return {k: v.to(dev) for k, v in stored.items()}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.to(torch.float64).cpu()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm())


def tokens_for(counts: list[int], k: int) -> int:
    """The fewest tokens over which `ids_with_counts` can route `counts` pairs with k slots each."""
    return max(max(counts), -(-sum(counts) // k))


def ids_with_counts(counts: list[int], T: int, k: int) -> torch.Tensor:
    """[T, k] int32 routing in which expert e gets exactly counts[e] <= T pairs (sum <= T * k), each on
    distinct tokens; unused slots -1. Filled slot by slot: expert e takes the next counts[e] (token, slot)
    places in the order (slot 0: tokens 0..T-1, slot 1: ...). For tests of an expert's last, partly filled
    block."""
    assert max(counts) <= T and sum(counts) <= T * k
    ids = torch.full((k * T,), -1, dtype=torch.int32)
    q = 0
    for e, c in enumerate(counts):
        ids[q:q + c] = e
        q += c
    return ids.view(k, T).T.contiguous()
