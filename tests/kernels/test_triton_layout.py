"""The moepack Triton layout transforms: exact round trips, and each stored element where the
docstring says it is (checked element by element, not through the transform itself)."""
import torch
from hypothesis import given, settings, strategies as st

from moepack.layouts.transform import Chain, step_from_json
from moepack.layouts.triton import (Fp4Bf16Bits, Fp4MmaTiles, InterleaveGateUp, NibbleSplit, TransposeLast2,
                                    ends_in_mma_tiles, mma_tiles_fit, mxfp4_k_chunk, triton_local_steps)
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


@SETTINGS
@given(e=st.integers(1, 2), groups=st.integers(1, 3), tiles=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_fp4_mma_tiles_positions(e, groups, tiles, seed):
    """Byte (row 16g + n, column 32t + j) lands at offset 16 * lane + reg of tile t of row group g, with
    lane = 4 * (n % 8) + (j // 2) % 4 and reg = 8 * (j // 16) + 4 * ((j // 8) % 2) + 2 * (n // 8) + j % 2:
    the wgmma register-operand owner of that byte (lane) and its place among the owner's 16 bytes."""
    x = _bytes((e, 16 * groups, 32 * tiles), seed)
    y = Fp4MmaTiles().apply(x)
    flat = y.reshape(e, groups, 16 * 32 * tiles)
    for g in range(groups):
        for t in range(tiles):
            for n in range(16):
                for j in range(32):
                    lane = 4 * (n % 8) + (j // 2) % 4
                    reg = 8 * (j // 16) + 4 * ((j // 8) % 2) + 2 * (n // 8) + j % 2
                    assert torch.equal(flat[:, g, 512 * t + 16 * lane + reg], x[:, 16 * g + n, 32 * t + j])
    assert torch.equal(Fp4MmaTiles().invert(y), x)


def test_fp4_mma_tiles_refuses_shapes_it_cannot_tile():
    import pytest
    from moepack.errors import PlanError
    for shape in ((1, 8, 32), (1, 16, 48)):
        with pytest.raises(PlanError, match="N % 16 == 0 and B % 32 == 0"):
            Fp4MmaTiles().apply(torch.zeros(shape, dtype=torch.uint8))
    with pytest.raises(PlanError, match="B % 4 == 0"):
        Fp4Bf16Bits().apply(torch.zeros(3, 6, dtype=torch.uint8))
    assert mma_tiles_fit(5760, 2880) and mma_tiles_fit(2880, 2880)
    assert not mma_tiles_fit(2880, 1440) and not mma_tiles_fit(24, 128)


def test_kernels_read_tiles_only_as_the_last_two_steps():
    import pytest
    from moepack.errors import PlanError
    assert ends_in_mma_tiles((InterleaveGateUp(), NibbleSplit(chunk=64), Fp4MmaTiles(), Fp4Bf16Bits()))
    assert not ends_in_mma_tiles((InterleaveGateUp(), NibbleSplit(chunk=64)))      # converted before the tiles
    assert not ends_in_mma_tiles(())
    for bad in ((NibbleSplit(chunk=64), Fp4Bf16Bits(), Fp4MmaTiles()), (Fp4MmaTiles(), NibbleSplit(chunk=64)),
                (NibbleSplit(chunk=64), Fp4Bf16Bits())):
        with pytest.raises(PlanError, match="must be the last two steps"):
            ends_in_mma_tiles(bad)


def _fp4(code: int) -> float:
    return (-1.0 if code & 8 else 1.0) * [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0][code & 7]


def _bf16_pair(bits: int) -> tuple[float, float]:
    t = torch.tensor([bits & 0xFFFF, bits >> 16], dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return tuple(float(v) * 2.0 ** 126 for v in t.to(torch.float64))


@SETTINGS
@given(words=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=6))
def test_fp4_bf16_bits_pairs_decode_to_the_codes(words):
    """The kernel's four bit recipes on a re-encoded word give, as bf16 pairs times 2^126, the FP4 values of
    (lo b0, lo b1), (lo b2, lo b3), (hi b0, hi b1), (hi b2, hi b3) of the original bytes."""
    x = torch.tensor([(w >> s) & 0xFF for w in words for s in (0, 8, 16, 24)], dtype=torch.int32).to(torch.uint8)
    y = Fp4Bf16Bits().apply(x)
    assert torch.equal(Fp4Bf16Bits().invert(y), x)
    M = 0x81C081C0
    for i in range(len(words)):
        b = [int(v) for v in x[4 * i:4 * i + 4]]
        w = sum(int(v) << (8 * s) for s, v in enumerate(y[4 * i:4 * i + 4]))
        pairs = [w & M, (w << 3) & M, (w << 6) & M, ((((w >> 7) & 0x00D800D8) * 0x821) & 0xFFFFFFFF) & M]
        want = [(b[0] & 15, b[1] & 15), (b[2] & 15, b[3] & 15), (b[0] >> 4, b[1] >> 4), (b[2] >> 4, b[3] >> 4)]
        for bits, (c0, c1) in zip(pairs, want):
            assert _bf16_pair(bits) == (_fp4(c0), _fp4(c1))


def test_transpose_and_json_round_trip():
    x = _bytes((2, 3, 5), 1)
    assert torch.equal(TransposeLast2().apply(x)[1, 4, 2], x[1, 2, 4])
    for step in (InterleaveGateUp(), NibbleSplit(chunk=32), TransposeLast2(), Fp4MmaTiles(), Fp4Bf16Bits()):
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
    assert triton_local_steps("w2_weight", "mxfp4", True, (E, 96, 64))[-2:] == (Fp4MmaTiles(), Fp4Bf16Bits())
    assert triton_local_steps("w2_weight", "mxfp4", True, (E, 96, 48)) == (NibbleSplit(chunk=32),)  # K = 96
    assert triton_local_steps("w2_weight", "mxfp4", True, (E, 40, 64)) == (NibbleSplit(chunk=64),)  # rows 40
    assert mxfp4_k_chunk(2880) == 64 and mxfp4_k_chunk(1440) == 32


def test_small_scales_is_every_code_at_most_128():
    from moepack.kernels.triton_mxfp4 import small_scales
    ok = torch.tensor([[0, 127, 128]], dtype=torch.uint8)
    assert small_scales(ok, ok)
    assert not small_scales(ok, torch.tensor([128, 129], dtype=torch.uint8))
    assert not small_scales(ok, None)
    assert not small_scales(torch.empty(0, dtype=torch.uint8))
