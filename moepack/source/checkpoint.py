"""A source checkpoint opened lazily: config, index, strict safetensors header checks, tensors on demand.

`Checkpoint.open` reads `config.json`, the index (or the safetensors files themselves) and only the
8-byte length + JSON header of each safetensors file; tensor data is read by `get`, one tensor at a
time, through `safetensors.safe_open` (memory-mapped). `bytes_materialized` counts what `get` returned.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from .header import HeaderError, read_header as parse_header
from ..errors import SourceError
from .hub import ResolvedSource, resolve

# safetensors dtype string -> (torch dtype, bits per header element)
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BOOL": (torch.bool, 8),
    "U8": (torch.uint8, 8),
    "I8": (torch.int8, 8),
    "U16": (torch.uint16, 16),
    "I16": (torch.int16, 16),
    "U32": (torch.uint32, 32),
    "I32": (torch.int32, 32),
    "U64": (torch.uint64, 64),
    "I64": (torch.int64, 64),
    "F16": (torch.float16, 16),
    "BF16": (torch.bfloat16, 16),
    "F32": (torch.float32, 32),
    "F64": (torch.float64, 64),
    "F8_E4M3": (torch.float8_e4m3fn, 8),
    "F8_E5M2": (torch.float8_e5m2, 8),
    "F8_E8M0": (torch.float8_e8m0fnu, 8),
    "F4": (torch.float4_e2m1fn_x2, 4),     # header last dim counts FP4 elements; torch holds 2 per byte
}

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_EXTRA_EXACT = {"config.json", "generation_config.json", "special_tokens_map.json", "chat_template.json",
                "chat_template.jinja", "vocab.json", "merges.txt", "preprocessor_config.json"}
_HASH_CHUNK = 8 << 20


def torch_dtype(st_dtype: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype string."""
    return SAFETENSORS_DTYPES[st_dtype][0]


def storage_shape(st_dtype: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a tensor with this header shape (F4: last dim halved, 2 elements per byte)."""
    if st_dtype == "F4" and shape:
        return (*shape[:-1], shape[-1] // 2)
    return tuple(shape)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its safetensors header describes it. `shape` is the header shape."""

    name: str
    file: str                          # file name relative to the checkpoint root
    dtype: str                         # safetensors dtype string, e.g. "U8", "F8_E4M3"
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]      # byte range inside the file's data section
    data_start: int = 0                # where the file's data section starts (8 + header length)

    @property
    def offsets(self) -> tuple[int, int]:
        return self.data_offsets

    @property
    def file_offset(self) -> int:
        """Absolute byte offset of the tensor's first byte in its file."""
        return self.data_start + self.data_offsets[0]

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]

    @property
    def torch_shape(self) -> tuple[int, ...]:
        """Shape of the tensor `Checkpoint.get` returns (differs from `shape` only for F4)."""
        return storage_shape(self.dtype, self.shape)



def read_header(path: Path, name: str | None = None) -> dict[str, TensorInfo]:
    """Parse and check one source file's safetensors header (the data is never read). Problems -> SourceError.

    The parsing and range checks are `moepack.source.header`'s; a source must also use only the dtypes
    moepack reads, give F4 tensors an even last dim, and not be truncated."""
    label = name or path.name
    try:
        h = parse_header(path)
    except HeaderError as exc:
        raise SourceError(f"{label}: {exc}") from None
    except OSError as exc:
        raise SourceError(f"{label}: cannot read: {exc.strerror or exc}") from None
    infos: dict[str, TensorInfo] = {}
    for tname, t in h.tensors.items():
        if t.dtype not in SAFETENSORS_DTYPES:
            raise SourceError(f"{label}: tensor {tname}: unknown dtype {t.dtype!r}")
        if t.dtype == "F4" and t.shape and t.shape[-1] % 2:
            raise SourceError(f"{label}: tensor {tname}: F4 tensor with an odd last dim {list(t.shape)}")
        infos[tname] = TensorInfo(tname, label, t.dtype, tuple(t.shape), (t.begin - h.data_start, t.end - h.data_start),
                                  h.data_start)
    past = sorted((t.end, n) for n, t in h.tensors.items() if h.past_end(n))
    if past:
        end, last = past[-1]
        raise SourceError(f"{label}: truncated: tensor {last} ends at byte {end - h.data_start} "
                          f"of the data section but the file holds {h.file_size - h.data_start}")
    return infos


def _read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SourceError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: {what} is not a JSON object")
    return data


def _is_extra_file(p: Path) -> bool:
    n = p.name
    return p.is_file() and (n in _EXTRA_EXACT or n.startswith("tokenizer") or n.endswith(".model"))


def sha256_file(path: Path) -> str:
    """sha256 of a file streamed in 8 MiB chunks (hashlib releases the GIL)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Checkpoint:
    """A checkpoint folder. Use `Checkpoint.open(src, revision=None)`.

    `root` folder; `config` (config.json); `files` safetensors paths; `extra_files` the other files to
    copy (config, generation config, tokenizer files); `source` the ResolvedSource."""

    def __init__(self, source: ResolvedSource, config: dict, tensors: dict[str, TensorInfo], files: list[Path]):
        self.source = source
        self.root = source.path
        self.config = config
        self._tensors = tensors
        self.files = files
        self.extra_files = sorted(p for p in self.root.iterdir() if _is_extra_file(p))
        self.bytes_materialized = 0
        self._handles: dict[str, object] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, src: str | os.PathLike, revision: str | None = None) -> "Checkpoint":
        source = src if isinstance(src, ResolvedSource) else resolve(str(src), revision)
        root = source.path
        if not (root / CONFIG_NAME).is_file():
            raise SourceError(f"{root / CONFIG_NAME}: config.json not found (is {root} a model checkpoint?)")
        config = _read_json(root / CONFIG_NAME, "config.json")
        tensors: dict[str, TensorInfo] = {}
        if (root / INDEX_NAME).is_file():
            index = _read_json(root / INDEX_NAME, "safetensors index")
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise SourceError(f"{root / INDEX_NAME}: no weight_map")
            bad = next((t for t, f in weight_map.items() if not isinstance(f, str) or Path(f).name != f), None)
            if bad is not None:
                raise SourceError(f"{root / INDEX_NAME}: tensor {bad} maps to {weight_map[bad]!r}, not a plain file name")
            names = sorted(set(weight_map.values()))
            headers = {}
            for fname in names:
                path = root / fname
                if not path.is_file():
                    tname = next(t for t, f in weight_map.items() if f == fname)
                    raise SourceError(f"{root / INDEX_NAME}: names file {fname} (for tensor {tname}) which does not exist")
                headers[fname] = read_header(path, fname)
            for tname, fname in weight_map.items():
                info = headers[fname].get(tname)
                if info is None:
                    raise SourceError(f"{root / INDEX_NAME}: tensor {tname} is mapped to {fname} but that file does not hold it")
                tensors[tname] = info
        else:
            single = root / SINGLE_NAME
            paths = [single] if single.is_file() else sorted(root.glob("*.safetensors"))
            if not paths:
                raise SourceError(f"{root}: no *.safetensors files")
            names = [p.name for p in paths]
            for p in paths:
                for tname, info in read_header(p).items():
                    if tname in tensors:
                        raise SourceError(f"{p.name}: tensor {tname} also in {tensors[tname].file}")
                    tensors[tname] = info
        return cls(source, config, tensors, [root / n for n in names])

    # ---- tensors
    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise SourceError(f"{self.root}: no tensor {name}") from None

    def get(self, name: str) -> torch.Tensor:
        """The tensor, in its source dtype and torch shape (memory-mapped read of this one tensor)."""
        info = self.info(name)
        handle = self._handle(info.file)
        try:
            t = handle.get_tensor(name)
        except Exception as exc:  # safetensors raises its own types
            raise SourceError(f"{info.file}: tensor {name}: cannot read ({exc})") from None
        with self._lock:
            self.bytes_materialized += info.nbytes
        return t

    def _handle(self, fname: str):
        with self._lock:
            h = self._handles.get(fname)
            if h is None:
                from safetensors import safe_open
                try:
                    h = safe_open(str(self.root / fname), framework="pt")
                except Exception as exc:
                    raise SourceError(f"{fname}: cannot open ({exc})") from None
                self._handles[fname] = h
            return h

    def close(self) -> None:
        with self._lock:
            self._handles.clear()

    # ---- provenance
    def provenance(self, workers: int | None = None) -> list[dict]:
        """[{name, size, sha256}] of every source file (safetensors files, then the extra files)."""
        paths = list(self.files) + [p for p in self.extra_files if p not in self.files]
        if (self.root / INDEX_NAME).is_file():
            paths.append(self.root / INDEX_NAME)
        paths = sorted(dict.fromkeys(paths), key=lambda p: p.name)
        with ThreadPoolExecutor(max_workers=workers or min(8, len(paths) or 1)) as pool:
            digests = list(pool.map(sha256_file, paths))
        return [{"name": p.name, "size": p.stat().st_size, "sha256": d} for p, d in zip(paths, digests)]

    def __repr__(self) -> str:
        return f"Checkpoint({self.root}, {len(self._tensors)} tensors in {len(self.files)} files)"
