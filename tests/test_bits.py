"""moepack.bits: integer views of a tensor's bytes and byte equality, at aligned and unaligned offsets."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moepack.bits import as_bits, as_items, same_bytes

DTYPES = [torch.uint8, torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.int64]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), offset=st.integers(0, 15), flip=st.integers(0, 10 ** 6),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 16))
def test_same_bytes_finds_one_flipped_byte_at_any_offset(n, offset, flip, dtype, seed):
    width = torch.empty(0, dtype=dtype).element_size()
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (offset + n * width,), dtype=torch.uint8, generator=g)
    a = raw[offset:].view(dtype) if offset % width == 0 else raw[offset:].clone().view(dtype)
    b = a.clone()
    assert same_bytes(a, b)
    pos = flip % (n * width)
    b.view(torch.uint8)[pos] ^= 1 + flip % 255
    assert not same_bytes(a, b)


def test_as_items_views_bytes_as_wider_items_or_refuses():
    t = torch.arange(32, dtype=torch.uint8)
    items = as_items(t, 8)
    assert items.dtype == torch.int64 and items.shape == (4,)
    assert torch.equal(items.view(torch.uint8), t)
    assert as_items(t[1:17], 8) is None                  # data not 8-byte aligned
    assert as_items(t[:12], 8) is None                   # 12 bytes are not whole int64 items
    assert as_items(t.view(4, 8)[:, :4], 4) is not None  # rows of 4 contiguous bytes
    assert as_items(torch.zeros(4, 2, dtype=torch.float32).t(), 8) is None   # last dim not contiguous


@pytest.mark.parametrize("dtype", DTYPES)
def test_as_bits_keeps_shape_and_width(dtype):
    t = torch.zeros(3, 5, dtype=dtype)
    b = as_bits(t)
    assert b.shape == t.shape and b.element_size() == t.element_size()
    assert as_bits(torch.tensor(1.5)).shape == (1,)
