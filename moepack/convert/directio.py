"""Sequential file writes that bypass the page cache (O_DIRECT), for the part files convert writes once.

    f = DirectFile.create(path)     # new file (O_EXCL | O_NOFOLLOW), O_DIRECT where the file system takes it
    f.write(buf)                    # any bytes-like object: any length, any address
    size = f.finish()               # writes what is still buffered and sets the file's true size
    f.fsync(); f.close()

Why (numbers in docs/DESIGN.md, "Direct writes"): on the 2-core VM convert is benchmarked on, writing 4 GiB
through the page cache took 14.5 s, 13 s of it kernel CPU copying into and reclaiming the cache; the same
bytes written with O_DIRECT took 1.6 s and 0.1 s of CPU. convert writes each output byte once and never reads
it back, so the page cache only costs it: the copy, then the eviction of the source it is reading.

O_DIRECT wants each write's file offset and length to be multiples of the device block (`block`: 512 or
4096 bytes, found by a probe write at open) and its memory address aligned (`mem_align`, probed too).
DirectFile keeps the not yet written tail of the file in a page-aligned staging buffer:
- a caller buffer that lands on a block boundary of the file and sits at an aligned address is written
  straight from the caller's memory (no copy), all its whole blocks (the rest is staged);
- anything else is copied into the staging buffer, written whenever it fills up;
- `finish()` writes the last partial block padded with zeros, then truncates the file to its true size.
Where O_DIRECT is refused (tmpfs, some network file systems: EINVAL at open or at the probe) the file is
written with ordinary writes (`direct` is False). The bytes in the file never depend on the path taken.
"""
from __future__ import annotations

import errno
import mmap
import os

import numpy as np
import torch

STAGING_BYTES = 4 << 20      # staging buffer per open file (one per rank part); multiple of every block tried
ZERO_COPY_MIN = 1 << 18      # smaller buffers are cheaper to copy than to give their own syscall
_BLOCKS = (512, 4096)        # offset/length alignments tried, smallest first
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def create_exclusive(path, flags: int = 0) -> int:
    """Create `path` for writing (fails if it exists; never follows a symlink), with extra open `flags`."""
    return os.open(path, _CREATE | flags, 0o644)


def address_of(buf: memoryview) -> int:
    """The memory address of a contiguous buffer's first byte."""
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data if len(buf) else 0


def aligned_empty(nbytes: int, align: int = mmap.PAGESIZE) -> torch.Tensor:
    """An uninitialised [nbytes] uint8 CPU tensor whose first byte sits at a multiple of `align`
    (so DirectFile can write it without a copy)."""
    raw = torch.empty(nbytes + align, dtype=torch.uint8)
    start = -raw.data_ptr() % align
    return raw[start:start + nbytes]


def _pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
    while len(buf):
        n = os.pwrite(fd, buf, offset)
        if n <= 0:      # pragma: no cover - pwrite reports errors by raising
            raise OSError(errno.EIO, "short write")
        buf, offset = buf[n:], offset + n


class DirectFile:
    """A file written front to back, through O_DIRECT when possible (see the module docstring).

    `fd` must be open for writing on an empty file; with `direct`, it was opened with O_DIRECT.
    Attributes: `direct` (bool), `block` and `mem_align` (bytes; 1 when not direct), `size` (bytes given)."""

    def __init__(self, fd: int, direct: bool) -> None:
        self.fd = fd
        self.size = 0                       # bytes given to write()
        self._pos = 0                       # file offset of staging[0]; a multiple of block
        self._fill = 0                      # bytes waiting in staging
        self.direct = direct
        self.block, self.mem_align = 1, 1
        self._stage_map = mmap.mmap(-1, STAGING_BYTES) if direct else None
        self._stage = memoryview(self._stage_map) if direct else None
        if direct and not self._probe():
            self._go_buffered()

    @classmethod
    def create(cls, path, direct: bool = True) -> "DirectFile":
        """Create `path` (must not exist; never follows a symlink) and wrap it."""
        if direct and hasattr(os, "O_DIRECT"):
            try:
                return cls(create_exclusive(path, os.O_DIRECT), True)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        return cls(create_exclusive(path), False)

    # -- setup
    def _probe(self) -> bool:
        """Find the smallest block and memory alignment O_DIRECT takes, by writing zero blocks at offset 0
        (overwritten by the real bytes later). False if none works."""
        zero = self._stage
        for block in _BLOCKS:
            try:
                _pwrite_all(self.fd, zero[:block], 0)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                continue
            self.block, self.mem_align = block, mmap.PAGESIZE
            try:                            # the staging buffer is page-aligned; is a block-aligned address enough?
                _pwrite_all(self.fd, zero[block:2 * block], 0)
                self.mem_align = block
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            os.ftruncate(self.fd, 0)
            return True
        os.ftruncate(self.fd, 0)
        return False

    def _go_buffered(self) -> None:
        """Fall back to ordinary writes (at open, when the probe found no alignment: nothing is staged yet)."""
        import fcntl
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self.direct, self.block, self.mem_align = False, 1, 1
        self._stage = self._stage_map = None    # unmapped when the last view of it goes

    # -- writing
    def _flush_stage(self) -> None:
        """Write the staged bytes (their count is a multiple of block here)."""
        _pwrite_all(self.fd, self._stage[:self._fill], self._pos)
        self._pos += self._fill
        self._fill = 0

    def _zero_copy_ok(self, buf: memoryview) -> bool:
        return (len(buf) >= max(ZERO_COPY_MIN, self.block) and self._fill % self.block == 0
                and address_of(buf) % self.mem_align == 0)

    def write(self, data) -> None:
        """Append `data` (bytes-like; a view is kept only during the call)."""
        buf = memoryview(data).cast("B")
        self.size += len(buf)
        if not self.direct:
            _pwrite_all(self.fd, buf, self._pos)
            self._pos += len(buf)
            return
        while len(buf):
            if self._zero_copy_ok(buf):
                if self._fill:
                    self._flush_stage()
                whole = len(buf) - len(buf) % self.block
                try:
                    _pwrite_all(self.fd, buf[:whole], self._pos)
                except OSError as exc:          # the probe's alignment did not hold here: stage from now on
                    if exc.errno != errno.EINVAL:
                        raise
                    self.mem_align = 1 << 62
                    continue
                self._pos += whole
                buf = buf[whole:]
                continue
            take = min(len(buf), STAGING_BYTES - self._fill)
            self._stage[self._fill:self._fill + take] = buf[:take]
            self._fill += take
            buf = buf[take:]
            if self._fill == STAGING_BYTES:
                self._flush_stage()

    def finish(self) -> int:
        """Write the staged tail (padded to a block, then truncated back); returns the file size."""
        if self.direct and self._fill:
            padded = -(-self._fill // self.block) * self.block
            self._stage[self._fill:padded] = bytes(padded - self._fill)
            _pwrite_all(self.fd, self._stage[:padded], self._pos)
            self._pos += self._fill
            self._fill = 0
            os.ftruncate(self.fd, self._pos)
        return self.size

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the descriptor and drop the staging buffer (idempotent; does not finish)."""
        self._stage = self._stage_map = None
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
