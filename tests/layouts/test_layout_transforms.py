"""Property tests: every transform round-trips bit-exactly on random shapes meeting its
preconditions; shapes violating them raise PlanError; every step survives JSON."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layout_cases import bytes_equal, random_tensor

from moepack.errors import PlanError
from moepack.layouts import Chain, step_from_json
from moepack.layouts.aiter import (AiterE8m0Shuffle, AiterShuffleScaleA16w4, AiterShuffleWeight,
                                   AiterShuffleWeightA16w4)
from moepack.layouts.fp8 import E4m3fnToE4m3fnuz, ScaleMul
from moepack.layouts.generic import (BlockAlignedTpSlice, CastDtype, DeinterleaveGateUp, EpSelect, InterleaveGateUp,
                                     Pad, Replicate, SwapHalves, TpSlice, tp_ranges)

FAST = settings(max_examples=25, deadline=None)
small = st.integers(1, 4)


def gen_of(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def roundtrip(step, x):
    """invert(apply(x)) bitwise x; the step also survives JSON."""
    assert step_from_json(step.to_json()) == step
    y = step.apply(x)
    assert bytes_equal(step.invert(y), x)
    return y


def roundtrip_parts(part, x):
    assert step_from_json(part.to_json()) == part
    parts = part.split(x)
    assert len(parts) == part.n and len({tuple(p.shape) for p in parts}) == 1
    assert bytes_equal(part.join(parts), x)
    return parts


@FAST
@given(a=small, n=st.integers(1, 6), b=small, seed=st.integers(0, 99), dim=st.sampled_from([1, -1]))
def test_gate_up_arrangement(a, n, b, seed, dim):
    shape = (a, 2 * n, b) if dim == 1 else (a, b, 2 * n)
    x = random_tensor(shape, torch.uint8, gen_of(seed))
    y = roundtrip(DeinterleaveGateUp(dim), x)
    assert bytes_equal(InterleaveGateUp(dim).apply(y), x)
    roundtrip(InterleaveGateUp(dim), x)
    z = roundtrip(SwapHalves(dim), x)
    assert bytes_equal(SwapHalves(dim).apply(z), x)


def test_gate_up_odd_rows_refused():
    x = torch.zeros(2, 5, 3, dtype=torch.uint8)
    for s in (DeinterleaveGateUp(), InterleaveGateUp(), SwapHalves()):
        with pytest.raises(PlanError):
            s.apply(x)


@FAST
@given(ep=st.integers(1, 4), k=small, seed=st.integers(0, 99))
def test_ep_select(ep, k, seed):
    x = random_tensor((ep * k, 3, 2), torch.float8_e4m3fn, gen_of(seed))
    parts = roundtrip_parts(EpSelect(ep), x)
    for r, p in enumerate(parts):
        assert bytes_equal(p, x[r * k:(r + 1) * k])
    if ep > 1:
        with pytest.raises(PlanError):
            EpSelect(ep).split(x[:ep * k - 1])


def test_replicate_join_checks_copies():
    x = torch.arange(6, dtype=torch.float32).view(2, 3)
    parts = roundtrip_parts(Replicate(3), x)
    bad = [parts[0], parts[1].clone(), parts[2].clone()]
    bad[2][1, 1] = 7.5
    with pytest.raises(ValueError):
        Replicate(3).join(bad)


@FAST
@given(tp=st.integers(1, 5), granule=st.sampled_from([1, 2, 16, 32]), extra=st.integers(0, 7),
       halves=st.sampled_from([1, 2]), dim=st.sampled_from([1, 2]), pad_extra=st.integers(0, 3),
       pad_value=st.sampled_from([0, 127]), seed=st.integers(0, 999))
def test_tp_slice(tp, granule, extra, halves, dim, pad_extra, pad_value, seed):
    size = granule * (tp + extra)
    longest = max(b - a for a, b in tp_ranges(size, tp, granule))
    padded = longest + pad_extra
    shape = [2, 3, 2]
    shape[dim] = halves * size
    x = random_tensor(shape, torch.uint8, gen_of(seed))
    step = TpSlice(tp, dim, halves, granule, size, padded, pad_value)
    parts = roundtrip_parts(step, x)
    # independent scalar rule: first n % tp ranks get one granule more, offsets from unpadded sizes
    n = size // granule
    start = 0
    for r, p in enumerate(parts):
        length = granule * (n // tp + (1 if r < n % tp else 0))
        for h in range(halves):
            ph = p.narrow(dim, h * padded, padded)
            assert bytes_equal(ph.narrow(dim, 0, length), x.narrow(dim, h * size + start, length))
            assert bool((ph.narrow(dim, length, padded - length) == pad_value).all())
        start += length
    assert start == size


def test_tp_slice_preconditions():
    x = torch.zeros(2, 64, 4, dtype=torch.uint8)
    with pytest.raises(PlanError):      # size not a multiple of the granule
        TpSlice(2, 1, 1, 32, 48, 32).split(x[:, :48])
    with pytest.raises(PlanError):      # more ranks than granules
        TpSlice(4, 1, 1, 32, 64, 32).split(x)
    with pytest.raises(PlanError):      # padded smaller than a rank's slice
        TpSlice(2, 1, 1, 1, 64, 16).split(x)
    with pytest.raises(PlanError):      # dim does not hold halves * size
        TpSlice(2, 1, 2, 1, 64, 32).split(x)
    parts = TpSlice(2, 1, 1, 1, 64, 40, 0).split(x)
    parts[1][0, 39, 0] = 1               # padding overwritten -> join refuses
    with pytest.raises(ValueError):
        TpSlice(2, 1, 1, 1, 64, 40, 0).join(parts)


@FAST
@given(tp=st.integers(1, 4), size=st.integers(4, 40), halves=st.sampled_from([1, 2]),
       dim=st.sampled_from([1, 2]), extra_blocks=st.integers(0, 2), seed=st.integers(0, 999))
def test_block_aligned_tp_slice(tp, size, halves, dim, extra_blocks, seed):
    block = 8
    if size < tp:
        size = tp
    spans = [block * (-(-b // block) - a // block) for a, b in tp_ranges(size, tp)]
    padded = max(spans) + block * extra_blocks
    gen = gen_of(seed)
    shape = [2, 3, 2]
    shape[dim] = halves * size
    w = random_tensor(shape, torch.float8_e4m3fn, gen)
    sshape = [2, 3, 2]
    sshape[dim] = halves * -(-size // block)
    s = random_tensor(sshape, torch.float32, gen)
    ws = BlockAlignedTpSlice(tp, dim, halves, size, padded, block, 1, False, 0)
    ss = BlockAlignedTpSlice(tp, dim, halves, size, padded, block, 1, True, 1.0)
    wparts, sparts = roundtrip_parts(ws, w), roundtrip_parts(ss, s)
    for (a, b), wp, sp in zip(tp_ranges(size, tp), wparts, sparts):
        k0 = a // block
        for h in range(halves):
            for t in range(padded):       # every local row: source row of its block, or zero
                src = k0 * block + t
                row = wp.narrow(dim, h * padded + t, 1)
                if a <= src < b:
                    assert bytes_equal(row, w.narrow(dim, h * size + src, 1))
                    # its scale block is the source scale of the source row's block
                    assert bytes_equal(sp.narrow(dim, h * padded // block + t // block, 1),
                                       s.narrow(dim, h * -(-size // block) + src // block, 1))
                else:
                    assert not bool(row.view(torch.uint8).any())


def test_block_aligned_join_detects_disagreeing_scales():
    s = torch.rand(1, 2, 1)   # I = 12 in 2 blocks of 8
    step = BlockAlignedTpSlice(2, 1, 1, 12, 16, 8, 1, True, 1.0)   # ranks [0,6) and [6,12): share block 0
    parts = step.split(s)
    parts[1] = parts[1].clone()
    parts[1][0, 0, 0] += 1.0
    with pytest.raises(ValueError):
        step.join(parts)
    with pytest.raises(PlanError):
        BlockAlignedTpSlice(2, 1, 1, 12, 12, 8).split(torch.zeros(1, 12, 1))   # padded not a block multiple


@FAST
@given(n=st.integers(1, 9), extra=st.integers(0, 5), halves=st.sampled_from([1, 2]), seed=st.integers(0, 99),
       value=st.sampled_from([0, 127]))
def test_pad(n, extra, halves, seed, value):
    x = random_tensor((2, halves * n, 3), torch.uint8, gen_of(seed))
    y = roundtrip(Pad(1, n, n + extra, halves, value), x)
    assert y.shape[1] == halves * (n + extra)
    with pytest.raises(PlanError):
        Pad(1, n + 1, n + extra + 1, halves, value).apply(x)


@FAST
@given(seed=st.integers(0, 999))
def test_cast_dtype_bits(seed):
    bits = torch.randint(-32768, 32768, (64,), dtype=torch.int32, generator=gen_of(seed)).to(torch.int16)
    x = bits.view(torch.bfloat16)                         # any bit pattern, NaN payloads included
    y = roundtrip(CastDtype("bfloat16", "float32"), x)
    finite = torch.isfinite(x)
    assert torch.equal(y[finite], x[finite].float())     # the value is the bf16 value
    h = torch.randn(32, generator=gen_of(seed)).half()
    roundtrip(CastDtype("float16", "float32"), h)
    with pytest.raises(ValueError):
        CastDtype("bfloat16", "float32").invert(torch.tensor([1.0 + 2 ** -20]))
    with pytest.raises(PlanError):
        CastDtype("float32", "bfloat16").apply(torch.zeros(2))


@FAST
@given(shape=st.tuples(small, small, small), seed=st.integers(0, 999))
def test_fnuz_roundtrip(shape, seed):
    x = random_tensor(shape, torch.float8_e4m3fn, gen_of(seed))
    x.view(torch.uint8).view(-1)[0] = 0x80                # at least one -0
    step = E4m3fnToE4m3fnuz()
    y = step.apply(x)
    assert y.dtype == torch.float8_e4m3fnuz
    # value: every fnuz value is half the fn value (scale doubles), -0 -> +0
    assert torch.equal(y.float() * 2, x.float())
    assert not bool((y.view(torch.uint8) == 0x80).any())
    back = step.invert(y)
    assert bytes_equal(back, step.canonicalize(x))
    assert bytes_equal(Chain((step,)).canonicalize(x), step.canonicalize(x))
    clean = step.canonicalize(x)
    assert bytes_equal(step.invert(step.apply(clean)), clean)   # bit-exact without -0


def test_fnuz_refuses_nan_and_wrong_dtype():
    x = torch.tensor([0x7F, 0x01], dtype=torch.uint8).view(torch.float8_e4m3fn)
    with pytest.raises(PlanError):
        E4m3fnToE4m3fnuz().apply(x)
    with pytest.raises(PlanError):
        E4m3fnToE4m3fnuz().apply(torch.zeros(2))


@FAST
@given(seed=st.integers(0, 999), factor=st.sampled_from([2.0, 0.5, 4.0]))
def test_scale_mul(seed, factor):
    x = random_tensor((3, 4), torch.float32, gen_of(seed))
    y = roundtrip(ScaleMul(factor), x)
    assert torch.equal(y, x * factor)


def test_scale_mul_refuses():
    with pytest.raises(PlanError):
        ScaleMul(3.0).apply(torch.ones(2))
    with pytest.raises(PlanError):
        ScaleMul(2.0).apply(torch.tensor([3e38]))


@FAST
@given(b=small, nt=small, kt=small, elem=st.sampled_from([1, 2]), seed=st.integers(0, 999))
def test_aiter_shuffle_weight(b, nt, kt, elem, seed):
    dtype = torch.uint8 if elem == 1 else torch.bfloat16
    x = random_tensor((b, 16 * nt, 32 * kt), dtype, gen_of(seed))
    roundtrip(AiterShuffleWeight((16, 16), elem), x)
    with pytest.raises(PlanError):
        AiterShuffleWeight((16, 16), elem).apply(x[:, :, :-1])
    with pytest.raises(PlanError):
        AiterShuffleWeight((16, 16), 3 - elem).apply(x)


@FAST
@given(e=small, r=st.integers(1, 40), k=st.integers(1, 10), seed=st.integers(0, 999))
def test_aiter_e8m0_shuffle(e, r, k, seed):
    x = random_tensor((e, r, k), torch.uint8, gen_of(seed))
    step = AiterE8m0Shuffle((e, r, k), 127)
    y = roundtrip(step, x)
    assert y.shape == (-(-e * r // 256) * 256, -(-k // 8) * 8)
    with pytest.raises(PlanError):
        step.apply(x[:, :, :k - 1] if k > 1 else x[:, :r - 1] if r > 1 else x[:0])


@FAST
@given(e=small, nt=small, kt=small, gate_up=st.booleans(), seed=st.integers(0, 999))
def test_aiter_a16w4(e, nt, kt, gate_up, seed):
    gen = gen_of(seed)
    N = (2 if gate_up else 1) * 16 * nt
    roundtrip(AiterShuffleWeightA16w4(16, gate_up), random_tensor((e, N, 64 * kt), torch.uint8, gen))
    s3 = random_tensor((e, 32 * nt, 8 * kt), torch.uint8, gen)
    roundtrip(AiterShuffleScaleA16w4(e, gate_up), s3)
    y2 = roundtrip(AiterShuffleScaleA16w4(e, gate_up), s3.reshape(e * 32 * nt, 8 * kt))
    assert bytes_equal(y2.view(s3.shape), AiterShuffleScaleA16w4(e, gate_up).apply(s3))
    with pytest.raises(PlanError):
        AiterShuffleWeightA16w4(16, gate_up).apply(random_tensor((e, N, 64 * kt + 32), torch.uint8, gen))
    with pytest.raises(PlanError):
        AiterShuffleScaleA16w4(e, gate_up).apply(random_tensor((e, 32 * nt, 8 * kt + 4), torch.uint8, gen))
