"""Golden tests: named source elements land exactly where the documented formulas say.

Every expected position is computed here by scalar integer arithmetic written from the formulas in
the docstrings and in docs/DESIGN.md, never with the tensor ops of the implementation."""
from __future__ import annotations

import random

import pytest
import torch
from layout_cases import make_spec, random_canonical, random_tensor

from moepack.layouts import get_target, plan_layer
from moepack.layouts.aiter import (AiterE8m0Shuffle, AiterShuffleScaleA16w4, AiterShuffleWeight,
                                   AiterShuffleWeightA16w4)


# ----------------------------------------------------------------------------- scalar formulas

def shuffle16_pos(n, k, K, V):
    """aiter shuffle_weight((16, 16)): n = 16*n1 + n2, k = 32*k1 + V*k2 + k3 -> (n1, k1, k2, n2, k3)."""
    n1, n2 = divmod(n, 16)
    k1, r = divmod(k, 32)
    k2, k3 = divmod(r, V)
    flat = (((n1 * (K // 32) + k1) * (32 // V) + k2) * 16 + n2) * V + k3
    return divmod(flat, K)


def a16w4_pos(n, k, N, K, gate_up):
    """shuffle_weight_a16w4(16): rows (h,) n0, nl; cols k0, kl, kp (64 bytes per k0)."""
    if gate_up:
        h, r = divmod(n, N // 2)
    else:
        h, r = 0, n
    n0, nl = divmod(r, 16)
    k0, r2 = divmod(k, 64)
    kl, kp = divmod(r2, 16)
    K0 = K // 64
    if gate_up:
        flat = (((((n0 * 2 + h) * K0 + k0) * 4 + kl) * 16 + nl) * 16 + kp)
    else:
        flat = ((((n0 * K0 + k0) * 4 + kl) * 16 + nl) * 16 + kp)
    return divmod(flat, K)


def e8m0_pos(i, j, sn):
    """e8m0_shuffle: i = 32a + 16b + c, j = 8d + 4e + f -> (a, d, f, c, e, b) in [sm/32, sn/8, 4, 16, 2, 2]."""
    a, r = divmod(i, 32)
    b, c = divmod(r, 16)
    d, r = divmod(j, 8)
    e, f = divmod(r, 4)
    flat = ((((a * (sn // 8) + d) * 4 + f) * 16 + c) * 2 + e) * 2 + b
    return divmod(flat, sn)


def scale_a16w4_pos(row, col, n, k, gate_up):
    """shuffle_scale_a16w4 within one expert: -> (n1, k1, kl, nl, kp, h-or-np) in [N1, K1, 4, 16, 2, 2]."""
    k1, r = divmod(col, 8)
    kp, kl = divmod(r, 4)
    if gate_up:
        h, r = divmod(row, n // 2)
        n1, nl = divmod(r, 16)
        last = h
    else:
        n1, r = divmod(row, 32)
        last, nl = divmod(r, 16)
    flat = ((((n1 * (k // 8) + k1) * 4 + kl) * 16 + nl) * 2 + kp) * 2 + last
    return divmod(flat, k)


def scalar_ranges(size, t, g):
    """The uneven rule, scalar: first (n % t) ranks get one granule more."""
    n = size // g
    out, start = [], 0
    for r in range(t):
        length = g * (n // t + (1 if r < n % t else 0))
        out.append((start, start + length))
        start += length
    return out


def _all_positions(x, pos, out_shape):
    """Build the expected output element by element from a scalar position map."""
    flat = x.contiguous().view(-1).tolist()
    out = [None] * len(flat)
    idx = 0
    for multi in _indices(tuple(x.shape)):
        o = pos(*multi)
        out[_flat(o, out_shape)] = flat[idx]
        idx += 1
    assert None not in out
    return out


def _indices(shape):
    if not shape:
        yield ()
        return
    for i in range(shape[0]):
        for rest in _indices(shape[1:]):
            yield (i, *rest)


def _flat(idx, shape):
    f = 0
    for i, s in zip(idx, shape):
        f = f * s + i
    return f


# ----------------------------------------------------------------------------- transforms alone

@pytest.mark.parametrize("elem", [1, 2])
def test_shuffle_weight_formula(elem):
    g = torch.Generator().manual_seed(1)
    x = random_tensor((2, 32, 64), torch.uint8 if elem == 1 else torch.bfloat16, g)
    y = AiterShuffleWeight((16, 16), elem).apply(x)
    V = 16 // elem
    exp = _all_positions(x.view(torch.int16) if elem == 2 else x,
                         lambda b, n, k: (b, *shuffle16_pos(n, k, 64, V)), y.shape)
    assert (y.view(torch.int16) if elem == 2 else y).reshape(-1).tolist() == exp


@pytest.mark.parametrize("gate_up", [True, False])
def test_a16w4_formulas(gate_up):
    g = torch.Generator().manual_seed(2)
    w = random_tensor((2, 64, 128), torch.uint8, g)
    y = AiterShuffleWeightA16w4(16, gate_up).apply(w)
    assert y.reshape(-1).tolist() == _all_positions(w, lambda e, n, k: (e, *a16w4_pos(n, k, 64, 128, gate_up)), y.shape)
    s = random_tensor((2, 64, 16), torch.uint8, g)
    ys = AiterShuffleScaleA16w4(2, gate_up).apply(s)
    assert ys.reshape(-1).tolist() == _all_positions(s, lambda e, n, k: (e, *scale_a16w4_pos(n, k, 64, 16, gate_up)), ys.shape)


def test_e8m0_shuffle_formula_and_pad():
    g = torch.Generator().manual_seed(3)
    s = random_tensor((3, 40, 5), torch.uint8, g)        # m = 120 -> 256, n = 5 -> 8
    y = AiterE8m0Shuffle((3, 40, 5), 127).apply(s)
    assert y.shape == (256, 8)
    yl = y.tolist()
    for e in range(3):
        for r in range(40):
            for c in range(5):
                i, j = e8m0_pos(e * 40 + r, c, 8)
                assert yl[i][j] == int(s[e, r, c])
    written = {e8m0_pos(i, j, 8) for i in range(120) for j in range(5)}
    assert all(yl[i][j] == 127 for i in range(256) for j in range(8) if (i, j) not in written)


# ----------------------------------------------------------------------------- whole targets

def _logical_places(spec, plan, role, idx):
    """[(rank, logical local index)] for canonical element `idx` of `role` (independent formulas)."""
    E, I, ep, tp = spec.num_experts, spec.intermediate, plan.ep, plan.tp
    tpl, El, Ip = tp // ep, E // ep, plan.intermediate_padded
    e = idx[0]
    er, le = divmod(e, El)
    ranks = [er * tpl + t for t in range(tpl)]
    block = spec.quant == "fp8_block"
    g = 32 if spec.quant == "mxfp4" else 1
    rngs = scalar_ranges(I, tpl, g)

    def place(j):                       # element j of I -> (tp_rank, local i)
        for t, (a, b) in enumerate(rngs):
            if a <= j < b:
                return t, j - (a // 128 * 128 if block else a)
        raise AssertionError(j)

    if role.startswith("w13") and not role.endswith("input_scale") and not (
            spec.quant == "fp8_tensor" and role.endswith("_scale")):
        row = idx[1]
        if block and role.endswith("_scale"):
            nb = -(-I // 128)
            h, kb = divmod(row, nb)
            return [(er * tpl + t, (le, h * Ip // 128 + kb - a // 128, *idx[2:]))
                    for t, (a, b) in enumerate(rngs) if a // 128 <= kb < -(-b // 128)]
        if spec.arrangement == "interleaved":
            j, h = divmod(row, 2)
        elif spec.arrangement == "separate":
            h, j = divmod(row, I)
        else:
            h, j = 0, row
        t, i = place(j)
        return [(er * tpl + t, (le, h * Ip + i, *idx[2:]))]
    if role == "w2_weight" or (role == "w2_weight_scale" and spec.quant != "fp8_tensor"):
        col = idx[2]
        if block and role.endswith("_scale"):
            return [(er * tpl + t, (le, idx[1], col - a // 128))
                    for t, (a, b) in enumerate(rngs) if a // 128 <= col < -(-b // 128)]
        per = 2 if spec.quant == "mxfp4" and role == "w2_weight" else 32 if spec.quant == "mxfp4" else 1
        t, i = place(col * per)
        return [(er * tpl + t, (le, idx[1], i // per))]
    return [(r, (le, *idx[1:])) for r in ranks]


def _stored_index(target, spec, plan, role, li, local_shape):
    """Stored index of logical local index `li` (AITER / flashinfer formulas), or None if not modelled."""
    Ip, H = plan.intermediate_padded, spec.hidden
    gated = spec.gated
    if target.backend == "flashinfer-cutlass":
        if gated and role in ("w13_weight", "w13_weight_scale", "w13_input_scale"):
            n = local_shape[1] // 2
            return (li[0], (li[1] + n) % (2 * n), *li[2:])
        return li
    if target.backend != "aiter":
        return None
    Hp = plan.hidden_padded
    le = li[0]
    if spec.quant == "mxfp4":
        inter = target.variant == "interleave"
        if role == "w13_weight":
            N, K = local_shape[1], Hp // 2
            return (le, *(a16w4_pos(li[1], li[2], N, K, gated) if inter else shuffle16_pos(li[1], li[2], K, 16)))
        if role == "w2_weight":
            return (le, *(a16w4_pos(li[1], li[2], H, Ip // 2, False) if inter else shuffle16_pos(li[1], li[2], Ip // 2, 16)))
        if role in ("w13_weight_scale", "w2_weight_scale"):
            n, k = local_shape[1], (Hp // 32 if role == "w13_weight_scale" else Ip // 32)
            if inter:
                return (le, *scale_a16w4_pos(li[1], li[2], n, k, role == "w13_weight_scale" and gated))
            return e8m0_pos(le * n + li[1], li[2], -(-k // 8) * 8)
        return li
    if role in ("w13_weight", "w2_weight"):
        K = Hp if role == "w13_weight" else Ip
        return (le, *shuffle16_pos(li[1], li[2], K, 16))
    return li


def _expected_value(target, role, v: torch.Tensor) -> torch.Tensor:
    fnuz = target.arch == "gfx942" and target.backend == "aiter" and v.dtype == torch.float8_e4m3fn
    if fnuz:
        b = _b(v)[0]
        return torch.tensor(0 if b == 0x80 else b, dtype=torch.uint8).view(torch.float8_e4m3fnuz)
    if target.backend == "aiter" and target.arch == "gfx942" and v.dtype == torch.float32:
        return v * 2
    if target.backend == "aiter" and v.dtype == torch.bfloat16:
        return v.float()
    return v


def _b(t: torch.Tensor) -> list[int]:
    return t.reshape(1).view(torch.uint8).tolist()


CASES = [
    # (backend, hardware, quant, variant, arrangement, E, H, I, tp, ep, bias)
    ("aiter", "mi355x", "mxfp4", "interleave", "interleaved", 4, 256, 96, 2, 1, True),
    ("aiter", "mi355x", "mxfp4", "separated", "interleaved", 4, 128, 96, 4, 2, True),
    ("aiter", "mi355x", "mxfp4", "separated", "separate", 2, 96, 64, 2, 1, False),   # K padded 96 -> 128
    ("aiter", "mi300x", "fp8_block", None, "separate", 2, 160, 384, 2, 1, False),
    ("aiter", "mi325x", "fp8_tensor", None, "separate", 4, 64, 40, 2, 2, False),
    ("aiter", "mi355x", "fp8_block", None, "separate", 2, 64, 320, 3, 1, False),
    ("flashinfer-cutlass", "h100", "fp8_tensor", None, "separate", 4, 32, 40, 3, 1, False),
    ("flashinfer-cutlass", "b200", "fp8_tensor", None, "up_only", 2, 32, 40, 3, 1, False),
    ("triton", "h200", "mxfp4", None, "interleaved", 4, 128, 96, 4, 2, True),
    ("triton", "mi300x", "fp8_block", None, "separate", 2, 64, 384, 2, 1, False),
    ("triton", "b200", "fp8_tensor", None, "up_only", 2, 32, 40, 3, 1, False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c[:5]))
def test_named_elements_land_by_formula(case):
    backend, hw, quant, variant, arr, E, H, I, tp, ep, bias = case
    spec = make_spec(quant, E=E, H=H, I=I, arrangement=arr, bias=bias)
    target = get_target(backend, hw, quant, variant)
    plan = plan_layer(spec, target, tp, ep)
    src = random_canonical(spec, seed=7)
    rnd = random.Random(11)
    for role, x in src.items():
        chain = plan.chains[role]
        parts = chain.apply(x)
        logical = [chain.invert_local(p) for p in parts]
        shape = tuple(x.shape)
        picks = {tuple(0 for _ in shape), tuple(s - 1 for s in shape)}
        picks |= {tuple(rnd.randrange(s) for s in shape) for _ in range(150)}
        for idx in picks:
            v = x[idx]
            for rank, li in _logical_places(spec, plan, role, idx):
                assert _b(logical[rank][li]) == _b(v), (role, idx, rank, li)
                si = _stored_index(target, spec, plan, role, li, tuple(logical[rank].shape))
                if si is not None:
                    got, want = parts[rank][si], _expected_value(target, role, v)
                    assert got.dtype == want.dtype and _b(got) == _b(want), (role, idx, rank, si)
