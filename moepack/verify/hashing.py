"""Streamed hashes of many files at once: `hash_files` runs `moepack.hashing.hash_file` (one sequential read
per file: its sha256, optional, and the tensor hash of each byte range) in threads, since hashlib and xxhash
release the GIL. `FileDigest` and `hash_file` are re-exported from `moepack.hashing`.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from ..hashing import FileDigest, hash_file

__all__ = ["FileDigest", "hash_file", "hash_files"]


def hash_files(jobs: list[tuple], workers: int | None = None, on_bytes=None) -> list[FileDigest]:
    """`hash_file` over `(path, spans)` or `(path, spans, whole)` jobs in threads; results in job order."""
    workers = workers or min(4, os.cpu_count() or 1, max(1, len(jobs)))
    if workers <= 1 or len(jobs) <= 1:
        return [hash_file(*job[:2], on_bytes, *job[2:]) for job in jobs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: hash_file(*job[:2], on_bytes, *job[2:]), jobs))
