"""Read a safetensors header without reading (or trusting) the data. The one header reader of moepack:
source checkpoints, `verify` and the runtime loader all parse headers here.

Layout of a safetensors file: 8 bytes little-endian u64 `n`, then `n` bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data;
offsets are relative to the start of the data (byte 8 + n).
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

MAX_HEADER_BYTES = 100 * 1024 * 1024

# bytes per element of each safetensors dtype (F4 packs two elements per byte)
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "F4": 0.5,
}


class HeaderError(Exception):
    """The file is not a well-formed safetensors file; the message says why."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int              # absolute byte offset in the file
    end: int                # absolute, exclusive

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    data_start: int                     # 8 + header length
    file_size: int
    tensors: dict[str, TensorEntry]
    metadata: dict

    def past_end(self, name: str) -> bool:
        return self.tensors[name].end > self.file_size


def read_header(path: str | os.PathLike) -> Header:
    """Parse and sanity-check the header of `path`: reads 8 + n bytes, never the data.

    Raises `HeaderError` when the header is malformed, or a tensor's byte range overlaps another or
    disagrees with its dtype and shape. A range past the end of the file (a truncated file) is not
    an error here: `Header.past_end(name)` tells, so that each lost tensor can be named."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise HeaderError(f"file is {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if 8 + n > size:
            raise HeaderError(f"header length {n} is larger than the file ({size} bytes): does not fit")
        if n > MAX_HEADER_BYTES:
            raise HeaderError(f"header length {n} exceeds the {MAX_HEADER_BYTES // 2**20} MiB limit of safetensors")
        raw = f.read(n)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeaderError(f"header is not valid JSON, not JSON at all ({e.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise HeaderError("header is not a JSON object")
    data_start = 8 + n
    metadata = doc.pop("__metadata__", None) or {}
    tensors: dict[str, TensorEntry] = {}
    for name, info in doc.items():
        tensors[name] = _entry(name, info, data_start)
    spans = sorted((t.begin, t.end, name) for name, t in tensors.items() if t.end > t.begin)
    for (b0, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise HeaderError(f"tensor {n1} overlaps tensor {n0} (they overlap in bytes [{b1}, {e0}))")
    return Header(data_start, size, tensors, metadata if isinstance(metadata, dict) else {})


def _entry(name: str, info, data_start: int) -> TensorEntry:
    try:
        dtype = info["dtype"]
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
    except (TypeError, KeyError, ValueError):
        raise HeaderError(f"tensor {name}: entry lacks dtype/shape/data_offsets") from None
    if dtype not in DTYPE_BYTES:
        raise HeaderError(f"tensor {name}: unknown dtype {dtype!r}")
    if any(d < 0 for d in shape) or begin < 0 or end < begin:
        raise HeaderError(f"tensor {name}: negative shape or offsets {shape} [{begin}, {end}]")
    want = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != want:
        raise HeaderError(f"tensor {name}: data_offsets hold {end - begin} bytes, {dtype} {list(shape)} needs {want:g}")
    return TensorEntry(dtype, shape, data_start + begin, data_start + end)
