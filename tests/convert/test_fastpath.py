"""convert's fast paths give exactly the bytes of the step-by-step ones (Chain.apply, read_canonical)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moepack.convert.fastpath import (BufferPool, _gathers, _one_copy, _range_boxes, _refine, apply_chain,
                                     prefetch_canonical, read_canonical_pread)
from moepack.example import write_example
from moepack.formats.assemble import read_canonical
from moepack.formats.detect import describe
from moepack.layouts.aiter import AiterE8m0Shuffle, AiterShuffleWeight, _permuted, _unpermuted
from moepack.layouts.generic import DeinterleaveGateUp, EpSelect, Pad, SwapHalves, TpSlice, new_buffer
from moepack.layouts.plan import plan_layer
from moepack.layouts.targets import get_target, list_targets
from moepack.layouts.transform import Chain
from moepack.layouts.triton import InterleaveGateUp as TritonInterleave
from moepack.layouts.triton import TransposeLast2
from moepack.source.checkpoint import Checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "layouts"))
from layout_cases import make_spec, random_tensor  # noqa: E402


def _bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8),
                                                                     b.contiguous().view(torch.uint8))


def _nan_bytes(shape, seed: int = 1) -> torch.Tensor:
    """uint8 data full of float64 signalling / quiet NaN and -0 patterns (what a wide-dtype copy must keep)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    flat = x.view(-1)
    pat = torch.tensor([1, 0, 0, 0, 0, 0, 0xF0, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0x80], dtype=torch.uint8)
    n = flat.numel() // 32 * 16
    flat[:n].view(-1, 16)[::2] = pat
    return x


def _same_parts(chain: Chain, x: torch.Tensor) -> None:
    got, want = apply_chain(chain, x), chain.apply(x)
    assert len(got) == len(want) == chain.num_parts
    for r, (g, w) in enumerate(zip(got, want)):
        assert _bytes_equal(g, w), (chain.describe(), r)


def _fused_steps(chain: Chain, x: torch.Tensor) -> int:
    """How many chain steps the one-pass write covers (0: not that path)."""
    plan = _one_copy(chain, x)
    return 0 if plan is None else plan.rest


# ----------------------------------------------------------------------------- digit helpers

@settings(max_examples=60, deadline=None)
@given(radices=st.lists(st.integers(1, 5), min_size=0, max_size=4), data=st.data())
def test_range_boxes_cover_the_range_in_order(radices, data):
    total = 1
    for r in radices:
        total *= r
    lo = data.draw(st.integers(0, total))
    hi = data.draw(st.integers(lo, total))
    seen = []
    for box in _range_boxes(lo, hi, tuple(radices)):
        assert len(box) == len(radices)
        moving = [k for k, ((a, b), r) in enumerate(zip(box, radices)) if (a, b) != (a, a + 1)]
        assert all(box[k] == (0, radices[k]) for k in moving[1:])     # one partial digit, lower ones whole
        idx = [[]]
        for a, b in box:
            idx = [i + [v] for i in idx for v in range(a, b)]
        for digits in idx:
            n = 0
            for v, r in zip(digits, radices):
                n = n * r + v
            seen.append(n)
    assert seen == list(range(lo, hi))


def test_refine_finds_common_digits_or_refuses():
    digits, groups, order = _refine((4, 6), (2, 12), (1, 0))
    assert digits == [2, 2, 6] and groups == [[0, 1], [2]] and order == [1, 2, 0]
    assert _refine((2, 3), (3, 2), (1, 0)) is None          # no common refinement
    assert _refine((2, 3), (7,), (0,)) is None


# ----------------------------------------------------------------------------- hand-built chains

@pytest.mark.parametrize("halves,interleaved", [(2, True), (2, False), (1, False)])
@pytest.mark.parametrize("pad_k", [False, True])
def test_fused_prefix_equals_chain_apply(halves, interleaved, pad_k):
    E, size, K, tp, granule = 3, 96, 40, 3, 32
    x = _nan_bytes((E, halves * size, K))
    steps = [DeinterleaveGateUp(1)] if interleaved else []
    steps.append(TpSlice(tp, 1, halves, granule, size, 64, 0))
    if pad_k:
        steps.append(Pad(dim=-1, from_size=K, to_size=48))
    chain = Chain(tuple(steps))
    assert _fused_steps(chain, x) == len(steps)
    _same_parts(chain, x)


@settings(max_examples=40, deadline=None)
@given(tp=st.integers(1, 3), granules=st.integers(3, 7), extra=st.integers(0, 2), interleaved=st.booleans(),
       ep=st.sampled_from([1, 2]), k=st.sampled_from([16, 24, 40]), kpad=st.integers(0, 24),
       kpad_value=st.sampled_from([0, 127]), tp_value=st.sampled_from([0, 127]), row_pad=st.integers(0, 3),
       swap=st.booleans(), last=st.sampled_from(["none", "transpose", "interleave", "shuffle"]),
       layout=st.sampled_from(["aligned", "offset", "strided"]), halves=st.sampled_from([1, 2]))
def test_pads_swaps_and_one_permutation_equal_chain_apply(tp, granules, extra, interleaved, ep, k, kpad, kpad_value,
                                                          tp_value, row_pad, swap, last, layout, halves):
    """Random chains of the fusable form, pad values differing per step (the later pad wins in corners),
    uneven splits, EP groups, unaligned (no wide items) or strided (no gather) sources, a half swap that cuts
    a slice in two, strided copies and gathers (transpose): the one-pass parts equal Chain.apply's."""
    g = 4
    size = granules * g
    padded = -(-granules // tp) * g + extra * g
    interleaved = interleaved and halves == 2
    steps = [DeinterleaveGateUp(1)] if interleaved else []
    if ep > 1:
        steps.append(EpSelect(ep))
    steps.append(TpSlice(tp, 1, halves, g, size, padded, tp_value))
    if kpad:
        steps.append(Pad(dim=-1, from_size=k, to_size=k + kpad, value=kpad_value))
    rows = halves * padded
    if row_pad:          # a second pad on the rows, of 2 halves even where the slice has 1 (cuts segments)
        steps.append(Pad(dim=1, from_size=rows // 2, to_size=rows // 2 + 4 * row_pad, halves=2, value=3))
        rows += 8 * row_pad
    swap = swap and rows % 2 == 0
    if swap:
        steps.append(SwapHalves(1))
    K = k + kpad
    if last == "transpose":
        steps.append(TransposeLast2())
    elif last == "interleave":
        steps.append(TritonInterleave())
    elif last == "shuffle" and rows % 16 == 0 and K % 32 == 0:
        steps.append(AiterShuffleWeight((16, 16), 1))
    chain = Chain(tuple(steps))
    shape = (2 * ep, halves * size, k)
    if layout == "strided":
        x = _nan_bytes(shape[:2] + (k + 16,))[..., 16:]
    else:
        n = 2 * ep * halves * size * k
        x = _nan_bytes((n + 1,))[int(layout == "offset"):][:n].view(shape)
    assert _fused_steps(chain, x) == len(steps)
    _same_parts(chain, x)


def test_steps_after_the_permutation_run_as_chain_steps():
    x = _nan_bytes((2, 64, 32))
    chain = Chain((TpSlice(2, 1, 2, 16, 32, 16, 0), TritonInterleave(), TransposeLast2(), SwapHalves(1)))
    assert _fused_steps(chain, x) == 2
    _same_parts(chain, x)


def test_e8m0_shuffle_with_rows_padded_across_experts_is_not_fused_but_exact():
    """e8m0_shuffle pads E*rows to a multiple of 256: not a box of [E, rows, k], so only the slice is fused."""
    x = _nan_bytes((3, 64, 5))
    steps = (TpSlice(2, 1, 2, 16, 32, 16, 127), AiterE8m0Shuffle((3, 32, 5), 127))
    assert _fused_steps(Chain(steps), x) == 1
    _same_parts(Chain(steps), x)
    y = _nan_bytes((4, 128, 5))                   # 4 * 64 rows: the e8m0 shuffle fuses, k padded 5 -> 8 (127)
    steps = (TpSlice(2, 1, 2, 16, 64, 32, 127), AiterE8m0Shuffle((4, 64, 5), 127))
    assert _fused_steps(Chain(steps), y) == 2
    _same_parts(Chain(steps), y)


@pytest.mark.parametrize("dims,perm", [((2, 3, 4, 2, 16), (0, 2, 1, 3, 4)),      # 16-byte inner kept
                                       ((2, 3, 4, 8), (0, 2, 1, 3)),             # 8 bytes
                                       ((2, 3, 4, 6), (1, 0, 2, 3)),             # 2 bytes
                                       ((2, 3, 4, 5), (0, 1, 3, 2))])            # inner moved: bytes
def test_permuted_wide_dtype_matches_byte_permute(dims, perm):
    n = 1
    for d in dims:
        n *= d
    x = _nan_bytes((n,))
    want = x.view(dims).permute(perm).contiguous().view(-1)
    got = _permuted(x, dims, perm)
    assert _bytes_equal(got, want)
    assert _bytes_equal(_unpermuted(got, dims, perm), x)
    assert _bytes_equal(_permuted(x[1:1 + n - 16], (n - 16,), (0,)), x[1:1 + n - 16])   # unaligned start


# ----------------------------------------------------------------------------- planner chains

def _canonical(shape, dtype: str, seed: int) -> torch.Tensor:
    if dtype == "uint8":
        return _nan_bytes(shape, seed)
    return random_tensor(shape, dtype, torch.Generator().manual_seed(seed))


PLANNED = [   # backend, hardware, quant, variant, arrangement, E, H, I, tp, ep
    ("aiter", "mi355x", "mxfp4", "interleave", "interleaved", 2, 128, 160, 4, 1),   # K 128 -> 256, I uneven 64/32/32/32
    ("aiter", "mi355x", "mxfp4", "interleave", "interleaved", 2, 256, 96, 2, 1),
    ("aiter", "mi355x", "mxfp4", "interleave", "separate", 2, 256, 64, 1, 1),
    ("aiter", "mi355x", "mxfp4", "interleave", "interleaved", 4, 128, 96, 4, 2),     # EP 2 x TP 2
    ("aiter", "mi355x", "mxfp4", "separated", "interleaved", 8, 96, 160, 4, 1),     # K 96 -> 128, e8m0 k 3 -> 8
    ("aiter", "mi355x", "mxfp4", "separated", "separate", 4, 96, 96, 2, 1),         # w2 scale: E*H not % 256
    ("aiter", "mi355x", "mxfp4", "separated", "interleaved", 8, 128, 64, 1, 1),
    ("triton", "h100", "mxfp4", None, "interleaved", 2, 128, 96, 2, 1),
    ("aiter", "mi300x", "fp8_tensor", None, "separate", 2, 48, 64, 2, 1),            # fnuz, K 48 -> 64
    ("aiter", "mi355x", "fp8_tensor", None, "separate", 2, 48, 40, 4, 1),
    ("flashinfer-cutlass", "h100", "fp8_tensor", None, "separate", 2, 64, 40, 2, 1),   # [up; gate]
    ("flashinfer-cutlass", "b200", "fp8_tensor", None, "up_only", 2, 64, 40, 4, 1),
    ("triton", "h100", "fp8_tensor", None, "interleaved", 2, 64, 48, 2, 1),
    ("aiter", "mi355x", "fp8_block", None, "separate", 1, 128, 320, 2, 1),           # block-aligned, uneven
    ("aiter", "mi300x", "fp8_block", None, "separate", 1, 256, 384, 4, 1),
    ("triton", "h100", "fp8_block", None, "separate", 2, 128, 320, 3, 1),
]


@pytest.mark.parametrize("case", PLANNED, ids=lambda c: "-".join(map(str, c)))
def test_apply_chain_on_planned_chains(case):
    backend, hw, quant, variant, arr, E, H, I, tp, ep = case
    spec = make_spec(quant, E=E, H=H, I=I, arrangement=arr, bias=True)
    plan = plan_layer(spec, get_target(backend, hw, quant, variant), tp, ep)
    for seed, (role, ct) in enumerate(sorted(spec.tensors.items())):
        chain, x = plan.chains[role], _canonical(ct.shape, ct.dtype, seed)
        _same_parts(chain, x)
        fused = _fused_steps(chain, x)
        whole = len(chain.steps)
        if backend == "aiter" and quant == "mxfp4" and not role.endswith("_bias"):
            # every AITER mxfp4 weight and scale is one pass, but an e8m0 shuffle padding E*H rows;
            # the scale shuffles move single bytes: by gather
            e8m0_rows_pad = variant == "separated" and role == "w2_weight_scale" and (E // ep) * H % 256
            assert fused == (whole - 1 if e8m0_rows_pad else whole), (role, chain.describe())
            assert _gathers(_one_copy(chain, x), x) == (role.endswith("_scale") and not e8m0_rows_pad)
        elif role.endswith(("_weight", "_scale")) and "tp_slice" in chain.describe() and not role.endswith("input_scale"):
            assert fused > 0, (role, chain.describe())


def test_cached_gather_index_serves_other_data_of_the_same_shape():
    spec = make_spec("mxfp4", E=2, H=256, I=160, arrangement="interleaved")
    chain = plan_layer(spec, get_target("aiter", "mi355x", "mxfp4"), 4, 1).chains["w13_weight_scale"]
    for seed in (1, 2):
        x = _nan_bytes(spec.tensors["w13_weight_scale"].shape, seed)
        assert _gathers(_one_copy(chain, x), x)
        _same_parts(chain, x)


@pytest.mark.parametrize("example", ["gpt-oss", "deepseek-v3", "qwen3-moe"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_apply_chain_on_real_checkpoints(example_ckpt, example, tp):
    ckpt = Checkpoint.open(example_ckpt(example))
    desc = describe(ckpt)
    spec = desc.moe_layers[0]
    for target in [t for t in list_targets() if t.quant == desc.quant]:
        lp = plan_layer(spec, get_target(target.backend, target.hardware, desc.quant, target.variant), tp, 1)
        for role, ct in spec.tensors.items():
            x = read_canonical(ckpt, ct)
            prefetch_canonical(ckpt, ct)          # a hint only: the bytes read after it are the same
            assert _bytes_equal(read_canonical_pread(ckpt, ct), x)
            _same_parts(lp.chains[role], x)
    ckpt.close()


# ----------------------------------------------------------------------------- buffers

def test_parts_come_from_the_pool():
    spec = make_spec("mxfp4", E=4, H=512, I=1024)         # w13 parts [4, 2048, 256] u8 = 2 MiB
    plan = plan_layer(spec, get_target("aiter", "mi355x", "mxfp4"), 1, 1)
    chain, x = plan.chains["w13_weight"], _nan_bytes(spec.tensors["w13_weight"].shape)
    with BufferPool():
        first = apply_chain(chain, x)
        ptr = first[0].data_ptr()
        again = apply_chain(chain, x)
        assert again[0].data_ptr() != ptr                # the first part is still held
        del first
        third = apply_chain(chain, x)
        assert third[0].data_ptr() == ptr and _bytes_equal(third[0], chain.apply(x)[0])


def test_buffer_pool_reuses_only_buffers_nothing_holds():
    shape = (2, BufferPool.MIN_BYTES // 2)
    with BufferPool():
        a = new_buffer(shape, torch.uint8)
        ptr = a.data_ptr()
        held = memoryview(a[1].numpy())          # the writer / hash threads hold such views
        del a
        b = new_buffer(shape, torch.uint8)
        assert b.data_ptr() != ptr               # still in use: a new buffer
        del held
        c = new_buffer((shape[1],), torch.int16)  # same byte size, other dtype: the free one comes back
        assert c.data_ptr() == ptr and c.dtype == torch.int16 and tuple(c.shape) == (shape[1],)
        small = new_buffer((3,), torch.float32)
        assert small.shape == (3,)
    d = new_buffer(shape, torch.uint8)           # no pool outside the block
    assert d.data_ptr() not in (ptr, b.data_ptr())
