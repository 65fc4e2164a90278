"""The moepack Triton layout transforms: exact round trips, and each stored element where the
docstring says it is (checked element by element, not through the transform itself)."""
import torch
from hypothesis import given, settings, strategies as st

from moepack.layouts.transform import Chain, step_from_json
from moepack.layouts.triton import InterleaveGateUp, NibbleSplit, TransposeLast2, mxfp4_k_chunk, triton_local_steps
from moepack.numerics import unpack_fp4

SETTINGS = settings(max_examples=25, deadline=None)


def _bytes(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.int32).to(torch.uint8)


@SETTINGS
@given(e=st.integers(1, 3), half=st.integers(1, 6), k=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_interleave_gate_up_positions(e, half, k, seed):
    x = _bytes((e, 2 * half, k), seed)
    y = InterleaveGateUp().apply(x)
    for j in range(half):
        assert torch.equal(y[:, 2 * j], x[:, j])
        assert torch.equal(y[:, 2 * j + 1], x[:, half + j])
    assert torch.equal(InterleaveGateUp().invert(y), x)
    b = torch.randn(e, 2 * half, dtype=torch.bfloat16)
    assert torch.equal(InterleaveGateUp().invert(InterleaveGateUp().apply(b)), b)


@SETTINGS
@given(e=st.integers(1, 2), n=st.integers(1, 4), chunks=st.integers(1, 3), chunk=st.sampled_from([32, 64]),
       seed=st.integers(0, 2**16))
def test_nibble_split_positions(e, n, chunks, chunk, seed):
    x = _bytes((e, n, chunks * chunk // 2), seed)
    t = NibbleSplit(chunk=chunk)
    y = t.apply(x)
    vals = unpack_fp4(x)                                   # logical element order
    stored = unpack_fp4(y)
    lo, hi = stored[..., 0::2], stored[..., 1::2]          # low / high nibble of each stored byte
    for c in range(chunks):
        for j in range(chunk // 2):
            b = c * chunk // 2 + j
            assert torch.equal(lo[..., b], vals[..., c * chunk + j])
            assert torch.equal(hi[..., b], vals[..., c * chunk + chunk // 2 + j])
    assert torch.equal(t.invert(y), x)


def test_transpose_and_json_round_trip():
    x = _bytes((2, 3, 5), 1)
    assert torch.equal(TransposeLast2().apply(x)[1, 4, 2], x[1, 2, 4])
    for step in (InterleaveGateUp(), NibbleSplit(chunk=32), TransposeLast2()):
        assert step_from_json(step.to_json()) == step


def test_local_steps_round_trip_every_role():
    E, Ip, H = 2, 64, 96
    shapes = {
        ("mxfp4", "w13_weight"): (E, 2 * Ip, H // 2), ("mxfp4", "w13_weight_scale"): (E, 2 * Ip, H // 32),
        ("mxfp4", "w13_bias"): (E, 2 * Ip), ("mxfp4", "w2_weight"): (E, H, Ip // 2),
        ("mxfp4", "w2_weight_scale"): (E, H, Ip // 32), ("mxfp4", "w2_bias"): (E, H),
        ("fp8_block", "w13_weight"): (E, 2 * Ip, H), ("fp8_block", "w13_weight_scale"): (E, 2, 1),
        ("fp8_tensor", "w13_weight"): (E, 2 * Ip, H),
    }
    for (quant, role), shape in shapes.items():
        steps = triton_local_steps(role, quant, True, shape)
        x = _bytes(shape, 3)
        chain = Chain(steps)
        y = chain.apply_local(x)
        assert y.numel() == x.numel()
        assert torch.equal(chain.invert_local(y), x), (quant, role)
        assert Chain.from_json(chain.to_json()) == chain
    assert triton_local_steps("w13_weight", "fp8_tensor", False, (E, Ip, H)) == ()
    assert mxfp4_k_chunk(2880) == 64 and mxfp4_k_chunk(1440) == 32


def test_small_scales_is_every_code_at_most_128():
    from moepack.kernels.triton_mxfp4 import small_scales
    ok = torch.tensor([[0, 127, 128]], dtype=torch.uint8)
    assert small_scales(ok, ok)
    assert not small_scales(ok, torch.tensor([128, 129], dtype=torch.uint8))
    assert not small_scales(ok, None)
    assert not small_scales(torch.empty(0, dtype=torch.uint8))
