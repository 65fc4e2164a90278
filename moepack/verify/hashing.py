"""Streamed hashes of whole files (sha256, optional) and of each tensor's bytes (the tensor hash of
`moepack.hashing`, xxh3_128), in one sequential read per file.

Files are read in `CHUNK` pieces; every piece updates the file's hash and the hash of each tensor
whose byte range it overlaps, so a file is read once whatever it holds. hashlib and xxhash release the
GIL, so `hash_files` runs files in threads.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..hashing import tensor_hasher

CHUNK = 8 * 1024 * 1024


@dataclass
class FileDigest:
    path: str
    size: int                                   # bytes actually read
    sha256: str                                 # of the whole file; "" when not asked for
    tensors: dict[str, str] = field(default_factory=dict)   # name -> tensor hash, only tensors read completely


def hash_file(path: str | os.PathLike, spans: dict[str, tuple[int, int]] | None = None, on_bytes=None,
              whole: bool = True) -> FileDigest:
    """sha256 of the file (only if `whole`; else `.sha256` is "") and the tensor hash (xxh3_128) of each
    `spans[name] = (begin, end)` absolute byte range within it. A range that runs past the end of the file (truncated) gets no entry in
    `.tensors`. `on_bytes(n)` is called after each chunk (progress bars)."""
    spans = spans or {}
    order = sorted(((b, e, name) for name, (b, e) in spans.items()), key=lambda t: t[0])
    hashers = {name: tensor_hasher() for _, _, name in order}
    file_hash = hashlib.sha256() if whole else None
    pos = 0
    first = 0          # index in `order` of the first span that may still overlap
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            if file_hash is not None:
                file_hash.update(chunk)
            lo, hi = pos, pos + n
            while first < len(order) and order[first][1] <= lo:
                first += 1
            i = first
            while i < len(order) and order[i][0] < hi:
                b, e, name = order[i]
                a, z = max(b, lo), min(e, hi)
                if z > a:
                    hashers[name].update(chunk[a - lo:z - lo])
                i += 1
            pos = hi
            if on_bytes is not None:
                on_bytes(n)
    digests = {name: hashers[name].hexdigest() for b, e, name in order if e <= pos}
    return FileDigest(str(path), pos, file_hash.hexdigest() if file_hash is not None else "", digests)


def hash_files(jobs: list[tuple], workers: int | None = None, on_bytes=None) -> list[FileDigest]:
    """`hash_file` over `(path, spans)` or `(path, spans, whole)` jobs in threads; results in job order."""
    workers = workers or min(4, os.cpu_count() or 1, max(1, len(jobs)))
    if workers <= 1 or len(jobs) <= 1:
        return [hash_file(*job[:2], on_bytes, *job[2:]) for job in jobs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: hash_file(*job[:2], on_bytes, *job[2:]), jobs))
