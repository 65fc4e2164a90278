"""THE content hash of a stored tensor: xxh3_128 of its raw bytes (the only definition; writer, verify and
the loader all use it).

    TENSOR_HASH                 # "xxh3_128": the algorithm, and the key of a tensor record in manifest.json
    tensor_hasher() -> h        # h.update(bytes-like); h.hexdigest() -> 32 hex chars; h.digest() -> 16 bytes
    tensor_hash(data) -> str    # one-shot: 32 lowercase hex chars

Why not sha256: the hash detects corruption, truncation and wrong bytes, not an adversary (whoever can
rewrite a shard can rewrite manifest.json too); 128 bits make an accidental collision negligible; and it
runs ~10x faster than sha256 here (docs/DESIGN.md, "Hashes"). xxhash releases the GIL, so threads hash
in parallel. Source files keep sha256 (provenance, as the Hub's LFS records it).
"""
from __future__ import annotations

import xxhash

TENSOR_HASH = "xxh3_128"
TENSOR_HASH_HEX_LEN = 32          # hexdigest length; digest() is 16 bytes


def tensor_hasher() -> "xxhash.xxh3_128":
    """A fresh incremental tensor hasher (update / hexdigest / digest)."""
    return xxhash.xxh3_128()


def tensor_hash(data) -> str:
    """xxh3_128 hex digest (32 chars) of a bytes-like object (bytes, bytearray, C-contiguous memoryview)."""
    return xxhash.xxh3_128(data).hexdigest()
