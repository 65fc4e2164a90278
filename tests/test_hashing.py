"""moepack.hashing: the tensor hash is XXH3-128 (a published known answer), incremental updates in any split
equal the one-shot hash, and byte-level views of a tensor hash like its bytes."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from moepack.hashing import TENSOR_HASH, TENSOR_HASH_HEX_LEN, tensor_hash, tensor_hasher


def test_known_answer_and_format():
    # XXH3_128bits of the empty input, canonical (big-endian) hex, as xxHash's own sanity tests and xxhsum -H2 give
    assert tensor_hash(b"") == "99aa06d3014798d86001c324468d497f"
    assert TENSOR_HASH == "xxh3_128" and len(tensor_hash(b"abc")) == TENSOR_HASH_HEX_LEN
    h = tensor_hasher()
    h.update(b"abc")
    assert h.digest() == bytes.fromhex(h.hexdigest()) and len(h.digest()) == 16


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=4))
def test_incremental_equals_one_shot(data, cuts):
    h = tensor_hasher()
    pos = 0
    for c in sorted(cuts):
        c = min(c, len(data))
        h.update(memoryview(data)[pos:c])
        pos = c
    h.update(data[pos:])
    assert h.hexdigest() == tensor_hash(data)
    # a different input hashes differently (no accidental constant): flip one byte
    if data:
        flipped = bytes([data[0] ^ 1]) + data[1:]
        assert tensor_hash(flipped) != tensor_hash(data)


def test_tensor_views_hash_as_their_bytes():
    t = torch.arange(100, dtype=torch.float32).reshape(10, 10)
    raw = t.numpy().tobytes()
    assert tensor_hash(memoryview(t.view(torch.uint8).numpy()).cast("B")) == tensor_hash(raw)
