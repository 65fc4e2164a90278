"""convert's fast paths give exactly the bytes of the step-by-step ones (Chain.apply, read_canonical)."""
from __future__ import annotations

import pytest
import torch

from moepack.convert.fastpath import _fusable, apply_chain, read_canonical_pread
from moepack.example import write_example
from moepack.formats.assemble import read_canonical
from moepack.formats.detect import describe
from moepack.layouts.aiter import _permuted, _unpermuted
from moepack.layouts.generic import DeinterleaveGateUp, Pad, TpSlice
from moepack.layouts.plan import plan_layer
from moepack.layouts.targets import get_target, list_targets
from moepack.layouts.transform import Chain
from moepack.source.checkpoint import Checkpoint


def _bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8),
                                                                     b.contiguous().view(torch.uint8))


def _nan_bytes(shape) -> torch.Tensor:
    """uint8 data full of float64 signalling / quiet NaN and -0 patterns (what a wide-dtype copy must keep)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    flat = x.view(-1)
    pat = torch.tensor([1, 0, 0, 0, 0, 0, 0xF0, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0x80], dtype=torch.uint8)
    n = flat.numel() // 32 * 16
    flat[:n].view(-1, 16)[::2] = pat
    return x


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
    assert _fusable(chain) is not None
    got, want = apply_chain(chain, x), chain.apply(x)
    assert len(got) == len(want) == tp
    assert all(_bytes_equal(g, w) for g, w in zip(got, want))


def test_pad_with_other_value_is_not_fused_but_still_exact():
    x = _nan_bytes((2, 64, 16))
    chain = Chain((TpSlice(2, 1, 1, 32, 64, 32, 0), Pad(dim=-1, from_size=16, to_size=32, value=127)))
    assert _fusable(chain)[2] is None
    assert all(_bytes_equal(g, w) for g, w in zip(apply_chain(chain, x), chain.apply(x)))


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


def _targets_for(quant):
    return [t for t in list_targets() if t.quant == quant]


@pytest.mark.parametrize("example", ["gpt-oss", "deepseek-v3", "qwen3-moe"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_apply_chain_on_real_plans(tmp_path, example, tp):
    src = write_example(example, tmp_path / example, size="tiny")
    ckpt = Checkpoint.open(src)
    desc = describe(ckpt)
    spec = desc.moe_layers[0]
    fused = 0
    for target in _targets_for(desc.quant):
        lp = plan_layer(spec, get_target(target.backend, target.hardware, desc.quant, target.variant), tp, 1)
        for role, ct in spec.tensors.items():
            x = read_canonical(ckpt, ct)
            assert _bytes_equal(read_canonical_pread(ckpt, ct), x)
            got, want = apply_chain(lp.chains[role], x), lp.chains[role].apply(x)
            assert len(got) == len(want) and all(_bytes_equal(g, w) for g, w in zip(got, want)), (target, role)
            fused += _fusable(lp.chains[role]) is not None
    assert fused > 0 or desc.quant == "fp8_block"     # fp8_block slices are block-aligned: not fused
    ckpt.close()


def test_buffer_pool_reuses_only_buffers_nothing_holds():
    from moepack.convert.fastpath import BufferPool
    from moepack.layouts.generic import new_buffer
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
