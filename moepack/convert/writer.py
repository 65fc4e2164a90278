"""Writing OUT safely: the output lock, atomic safetensors part files, shard sizes.

A part file is written under a temporary name (`.{name}.tmp`), fsynced, renamed to its final name,
and then the directory is fsynced: a crash leaves either the complete file or no file (plus at most a
temp file, which `remove_temp_files` clears). Its layout is declared up front (`TensorEntry`s), so the
safetensors header goes first and the tensor bytes stream after it in order; the content hash of every
tensor (`moepack.hashing`, xxh3_128) is computed on the way, in a thread (xxhash releases the GIL). A part
file's `digest` (`part_digest`) is derived from its header and its tensors' hashes, so no second pass runs
over the file's bytes.

Nothing here writes outside OUT: names are plain file names (`plain_name`), OUT must not be a
symlink nor contain one (`check_out_dir`), and files are created with O_EXCL | O_NOFOLLOW.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..errors import BadInputError, EnvironmentError_
from ..hashing import TENSOR_HASH, hash_file, tensor_hasher
from ..source.header import HeaderError, read_header
from .directio import DirectFile, create_exclusive

LOCK_NAME = ".moepack.lock"
TEMP_SUFFIX = ".tmp"
CHUNK = 32 << 20            # bytes handed to one write / hash update
DATA_ALIGN = 4096           # part files: tensor data starts at this offset multiple (O_DIRECT writes, mmap)

# safetensors header dtype strings <-> torch dtypes (the ones moepack writes or passes through)
ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2": torch.float8_e5m2, "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
}
if hasattr(torch, "float8_e8m0fnu"):
    ST_DTYPES["F8_E8M0"] = torch.float8_e8m0fnu
TORCH_TO_ST: dict[torch.dtype, str] = {v: k for k, v in ST_DTYPES.items()}


def st_dtype(t: torch.Tensor | torch.dtype) -> str:
    """The safetensors dtype string of a tensor or torch dtype ("U8", "F32", ...)."""
    dt = t.dtype if isinstance(t, torch.Tensor) else t
    try:
        return TORCH_TO_ST[dt]
    except KeyError:
        raise BadInputError(f"dtype {dt} cannot be stored in safetensors by moepack") from None


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, row-major (a view when already contiguous)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    flat = t.contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


# ----------------------------------------------------------------------------- sizes

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(size: int | str) -> int:
    """"5GB" -> 5_000_000_000, "500MiB" -> 524_288_000, 1234 -> 1234 (decimal units, like Hugging Face)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = _SIZE_RE.match(str(size))
        if not m:
            raise BadInputError(f"--max-shard-size {size!r} is not a size (examples: 5GB, 500MB, 1073741824)")
        unit = (m.group(2) or "").lower()
        unit = unit[:-1] if unit.endswith("b") else unit
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise BadInputError(f"--max-shard-size must be positive, got {size!r}")
    return value


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a part file, declared before writing: name, safetensors dtype string, shape, byte size."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @classmethod
    def of(cls, name: str, t: torch.Tensor) -> "TensorEntry":
        return cls(name, st_dtype(t), tuple(t.shape), t.numel() * t.element_size())


def split_parts(entries: Sequence[TensorEntry], max_bytes: int) -> list[list[TensorEntry]]:
    """Greedy, order-keeping split into parts of at most `max_bytes` of tensor data
    (a tensor larger than that gets a part of its own). Never returns an empty part."""
    parts: list[list[TensorEntry]] = []
    current: list[TensorEntry] = []
    size = 0
    for e in entries:
        if current and size + e.nbytes > max_bytes:
            parts.append(current)
            current, size = [], 0
        current.append(e)
        size += e.nbytes
    if current:
        parts.append(current)
    return parts


def safetensors_header(entries: Sequence[TensorEntry], metadata: dict[str, str] | None = None,
                       align: int = 8) -> bytes:
    """The 8-byte length + JSON header of a safetensors file holding `entries` in order.
    Padded with spaces so that tensor data starts at a multiple of `align` (a multiple of 8) bytes.
    Deterministic (no timestamps)."""
    if align <= 0 or align % 8:
        raise ValueError(f"header alignment {align} is not a positive multiple of 8")
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for e in entries:
        if e.name in header:
            raise ValueError(f"tensor {e.name!r} declared twice in one part")
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % align)
    return struct.pack("<Q", len(raw)) + raw


# ----------------------------------------------------------------------------- OS errors and paths

_ENV_ERRNOS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def environment_error(exc: OSError, path: Path | str, doing: str = "writing") -> Exception:
    """Map an OSError to the moepack error a user sees: EnvironmentError_ (exit 4) with a one-line
    message naming the file for disk-full / quota / permission / read-only; other OSErrors unchanged."""
    what = _ENV_ERRNOS.get(exc.errno)
    if what is None:
        return exc
    err = EnvironmentError_(f"{what} while {doing} {path}")
    err.__cause__ = exc
    return err


def is_plain_name(name: object) -> bool:
    """True for a plain file name: a non-empty string, no separators or NUL, not '.', '..' or absolute."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name and not os.path.isabs(name))


def plain_name(name: str) -> str:
    """`name` if it is a plain file name (see is_plain_name), else BadInputError."""
    if not is_plain_name(name):
        raise BadInputError(f"output file name {name!r} is not a plain file name inside OUT")
    return name


def check_out_dir(out: Path) -> None:
    """Refuse an OUT that is a symlink or contains one anywhere below it (BadInputError naming it)."""
    out = Path(out)
    if out.is_symlink():
        raise BadInputError(f"OUT {out} is a symlink; give the real folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise BadInputError(f"OUT {out} exists and is not a folder")
    for dirpath, dirnames, filenames in os.walk(out):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                raise BadInputError(f"OUT contains a symlink: {p}; moepack never writes through links")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, buf: memoryview) -> None:
    while len(buf):
        n = os.write(fd, buf)
        buf = buf[n:]


def remove_temp_files(out: Path) -> list[str]:
    """Delete leftover `.*.tmp` files in OUT (from a killed run). Returns their names."""
    removed = []
    for p in Path(out).iterdir():
        if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and not p.is_symlink() and p.is_file():
            p.unlink()
            removed.append(p.name)
    return sorted(removed)


def write_file_atomic(out: Path, name: str, data: bytes) -> None:
    """Write a small file OUT/name atomically: temp name, fsync, rename, fsync OUT."""
    out = Path(out)
    final = out / plain_name(name)
    tmp = out / f".{name}{TEMP_SUFFIX}"
    fd = None
    try:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        fd = create_exclusive(tmp)
        _write_all(fd, memoryview(data))
        os.fsync(fd)
        os.close(fd)
        fd = None
        if final.is_symlink():
            raise BadInputError(f"{final} is a symlink; moepack never writes through links")
        os.replace(tmp, final)
        fsync_dir(out)
    except OSError as exc:
        raise environment_error(exc, final) from exc
    finally:
        if fd is not None:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------- part writer

@dataclass
class WrittenFile:
    """What a finished part file holds: its name, size, `part_digest` and each tensor's dtype, shape and
    tensor hash (key `TENSOR_HASH`)."""

    name: str
    size: int
    digest: str
    tensors: dict[str, dict] = field(default_factory=dict)   # name -> {"dtype", "shape", TENSOR_HASH}

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, "digest": self.digest, "tensors": self.tensors}

    @classmethod
    def from_json(cls, d: dict) -> "WrittenFile":
        return cls(d["name"], int(d["size"]), d["digest"], dict(d["tensors"]))


def part_digest(header_block: bytes, tensor_hashes: Iterable[str]) -> str:
    """The `digest` of a safetensors part file: sha256 over its header block (the 8-byte length and the
    JSON header, i.e. every byte before the tensor data) followed by the 16 raw bytes of each tensor's
    xxh3_128 (`moepack.hashing`, given as hex), in file (data offset) order. Our parts hold their tensors
    back to back with no gap, so with the file size this pins every byte of the file while the tensor
    bytes are hashed once; the sha256 here only runs over the header and the digests (cheap)."""
    h = hashlib.sha256(header_block)
    for d in tensor_hashes:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def file_digest(path: Path | str) -> tuple[int, str]:
    """(size, `part_digest`) of an existing part file, re-hashing each tensor from disk (resume) in one read
    (`moepack.hashing.hash_file`). ValueError if the header is malformed (`moepack.source.header`'s checks)
    or not one of ours (tensors not back to back from the data start, truncated, bytes after the last one)."""
    try:
        header = read_header(path)
    except HeaderError as exc:
        raise ValueError(f"{path}: {exc}") from None
    spans = sorted((t.begin, t.end, name) for name, t in header.tensors.items())
    pos = header.data_start
    for b, e, _ in spans:
        if b != pos:
            raise ValueError(f"{path}: tensor data not back to back")
        pos = e
    read = hash_file(path, {name: (b, e) for b, e, name in spans}, whole=False)
    if len(read.tensors) != len(spans):
        raise ValueError(f"{path}: truncated")
    if read.size != pos:
        raise ValueError(f"{path}: bytes after the last tensor")
    with open(path, "rb") as f:
        header_block = f.read(header.data_start)
    return pos, part_digest(header_block, (read.tensors[name] for _, _, name in spans))


class PartWriter:
    """Writes one safetensors file OUT/name whose tensors are declared up front, in write order.

        with PartWriter(out, "model-rank-0-part-0.safetensors", entries) as w:
            w.write("a", tensor_a); w.write_raw("b", chunks)
            w.begin("c"); w.append(buf); ...; w.end()       # the same, one buffer at a time
        w.result -> WrittenFile

    The header is padded so tensor data starts at a multiple of DATA_ALIGN; the bytes go to disk through
    `DirectFile` (O_DIRECT where the file system takes it) and each tensor is hashed on the way.
    Leaving the `with` block by an exception removes the temp file and leaves no final file.
    OSErrors for disk full / quota / permission / read-only become EnvironmentError_ naming the file.
    """

    def __init__(self, out: Path | str, name: str, entries: Sequence[TensorEntry],
                 metadata: dict[str, str] | None = None, direct: bool = True) -> None:
        self.out = Path(out)
        self.name = plain_name(name)
        self.final = self.out / name
        self.temp = self.out / f".{name}{TEMP_SUFFIX}"
        self.entries = list(entries)
        self._next = 0
        self._file: DirectFile | None = None
        self._open: tuple[TensorEntry, object, int] | None = None   # (entry, hasher, start size) of begin()
        self._digests: dict[str, str] = {}
        self.result: WrittenFile | None = None
        self._header = safetensors_header(self.entries, metadata, DATA_ALIGN)
        try:
            if self.temp.is_symlink() or self.temp.exists():
                self.temp.unlink()
            self._file = DirectFile.create(self.temp, direct)
            self._file.write(self._header)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise environment_error(exc, self.final) from exc
            raise

    @property
    def direct(self) -> bool:
        """True while the file is written with O_DIRECT."""
        return self._file is not None and self._file.direct

    # -- internals
    def _expect(self, name: str, dtype: str | None, shape: tuple[int, ...] | None) -> TensorEntry:
        if self._file is None:
            raise RuntimeError(f"part {self.name} is closed")
        if self._open is not None:
            raise RuntimeError(f"part {self.name}: tensor {self._open[0].name} is not ended")
        if self._next >= len(self.entries):
            raise RuntimeError(f"part {self.name}: tensor {name!r} was not declared")
        e = self.entries[self._next]
        if e.name != name or (dtype is not None and dtype != e.dtype) or (shape is not None and shape != e.shape):
            raise RuntimeError(f"part {self.name}: expected {e.name} {e.dtype}{list(e.shape)}, "
                               f"got {name} {dtype}{list(shape) if shape is not None else ''}")
        return e

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise environment_error(exc, self.final) from exc
            raise

    def _begin(self, e: TensorEntry) -> None:
        self._open = (e, tensor_hasher(), self._file.size)

    def _append(self, buf) -> None:
        if self._open is None:
            raise RuntimeError(f"part {self.name}: append() outside begin() / end()")
        buf = tensor_bytes(buf) if isinstance(buf, torch.Tensor) else memoryview(buf).cast("B")
        for i in range(0, len(buf), CHUNK):
            chunk = buf[i:i + CHUNK]
            self._open[1].update(chunk)
            self._file.write(chunk)

    def _end(self) -> None:
        if self._open is None:
            raise RuntimeError(f"part {self.name}: end() without begin()")
        e, h, start = self._open
        got = self._file.size - start
        if got != e.nbytes:
            raise RuntimeError(f"part {self.name}: tensor {e.name} got {got} bytes, declared {e.nbytes}")
        self._digests[e.name] = h.hexdigest()
        self._open = None
        self._next += 1

    # -- public
    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next declared tensor (its dtype and shape must match the declaration)."""
        self._guard(self._write, name, tensor)

    def _write(self, name: str, tensor: torch.Tensor) -> None:
        self._begin(self._expect(name, st_dtype(tensor), tuple(tensor.shape)))
        self._append(tensor_bytes(tensor))
        self._end()

    def write_raw(self, name: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Write the next declared tensor from raw bytes (e.g. copied from a source file)."""
        self._guard(self._write_raw, name, chunks)

    def _write_raw(self, name: str, chunks: Iterable[bytes | memoryview]) -> None:
        self._begin(self._expect(name, None, None))
        for c in chunks:
            self._append(c)
        self._end()

    def begin(self, name: str) -> None:
        """Start the next declared tensor; its bytes follow by `append`, then `end()` checks their count."""
        self._guard(lambda: self._begin(self._expect(name, None, None)))

    def append(self, buf) -> None:
        """More bytes of the tensor begun (bytes-like, or a CPU tensor's raw bytes)."""
        self._guard(self._append, buf)

    def end(self) -> None:
        self._guard(self._end)

    def close(self) -> WrittenFile:
        """Finish: check every declared tensor was written, fsync, rename to the final name, fsync OUT."""
        return self._guard(self._close)

    def _close(self) -> WrittenFile:
        if self._open is not None or self._next != len(self.entries):
            raise RuntimeError(f"part {self.name}: {len(self.entries) - self._next} declared tensors not written")
        digest = part_digest(self._header, (self._digests[e.name] for e in self.entries))
        size = self._file.finish()
        self._file.fsync()
        self._file.close()
        self._file = None
        if self.final.is_symlink():
            raise BadInputError(f"{self.final} is a symlink; moepack never writes through links")
        os.replace(self.temp, self.final)
        fsync_dir(self.out)
        tensors = {e.name: {"dtype": e.dtype, "shape": list(e.shape), TENSOR_HASH: self._digests[e.name]}
                   for e in self.entries}
        self.result = WrittenFile(self.name, size, digest, tensors)
        return self.result

    def abort(self) -> None:
        """Drop the temp file (idempotent). The final file, if an earlier run made it, is left alone."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        try:
            if self.temp.exists() or self.temp.is_symlink():
                self.temp.unlink()
        except OSError:
            pass

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.result is None:
            self.close()


# ----------------------------------------------------------------------------- the output lock

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """An exclusive lock on OUT: the file OUT/.moepack.lock holding "pid hostname".

    Taken atomically (the content is written to a private temp file, then hard-linked to the lock
    name, which fails if the lock exists). A lock of this host whose pid is dead is stale and taken
    over; a live one raises EnvironmentError_ "another convert is writing to OUT (pid N)".

        with OutputLock(out):
            ...
    """

    def __init__(self, out: Path | str) -> None:
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.held = False
        self._token = f"{os.getpid()} {socket.gethostname()}\n"

    def _holder(self) -> tuple[int | None, str | None]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None, None
        parts = text.split()
        if len(parts) >= 2 and parts[0].isdigit():
            return int(parts[0]), parts[1]
        return None, None

    def acquire(self) -> "OutputLock":
        if self.path.is_symlink():
            raise BadInputError(f"lock file {self.path} is a symlink; remove it")
        tmp = self.out / f".moepack.lock.{os.getpid()}{TEMP_SUFFIX}"
        try:
            if tmp.exists():
                tmp.unlink()
            fd = create_exclusive(tmp)
            try:
                _write_all(fd, memoryview(self._token.encode()))
                os.fsync(fd)
            finally:
                os.close(fd)
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return self
                except FileExistsError:
                    pid, host = self._holder()
                    if pid is not None and host == socket.gethostname() and not _pid_alive(pid):
                        self._take_over_stale(pid)
                        continue
                    who = f"pid {pid}" if pid is not None else "unknown pid"
                    if host not in (None, socket.gethostname()):
                        who += f" on {host}"
                    raise EnvironmentError_(
                        f"another convert is writing to {self.out} ({who}); lock file {self.path}") from None
            raise EnvironmentError_(f"could not take the lock {self.path} (it keeps changing)")
        except OSError as exc:
            raise environment_error(exc, self.path, "locking") from exc
        finally:
            if tmp.exists():
                tmp.unlink()

    def _take_over_stale(self, pid: int) -> None:
        # rename the stale lock to a unique name first, so two takers cannot both remove a fresh lock
        grave = self.out / f".moepack.lock.stale.{os.getpid()}{TEMP_SUFFIX}"
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        try:
            text = grave.read_text().split()
            if text and text[0] != str(pid):   # someone replaced it meanwhile: put it back if we can
                try:
                    os.link(grave, self.path)
                except FileExistsError:
                    pass
        finally:
            grave.unlink()

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if self.path.read_text() == self._token:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
