"""The source files' sha256 (the manifest's `source.files`), hashed from the bytes convert reads anyway.

    hasher = SourceHasher(ckpt)            # one thread
    hasher.feed("model-00001.safetensors", file_offset, buf)    # any bytes convert read from a source file
    hasher.result() -> [{name, size, sha256}]   # == Checkpoint.provenance(): same files, order and digests

sha256 needs each file's bytes in order. The hasher keeps a cursor per file: bytes fed at the cursor are
hashed from the caller's buffer (no second read); a gap before a fed offset (a header, a tensor convert
has not read yet) is read from the file first; bytes before the cursor are already hashed and skipped;
`result()` reads each file's tail. So the digests equal a sequential hash of every file whatever was fed,
and when convert reads a file front to back (the shared unit first, then the layers) each byte is read once.
"""
from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path

from ..source.checkpoint import INDEX_NAME, Checkpoint

_CHUNK = 8 << 20


def provenance_paths(ckpt: Checkpoint) -> list[Path]:
    """The files `Checkpoint.provenance` lists, in its order: safetensors, extra files and index, by name."""
    paths = list(ckpt.files) + [p for p in ckpt.extra_files if p not in ckpt.files]
    if (ckpt.root / INDEX_NAME).is_file():
        paths.append(ckpt.root / INDEX_NAME)
    return sorted(dict.fromkeys(paths), key=lambda p: p.name)


class _FileHash:
    def __init__(self, path: Path) -> None:
        self.path, self.h, self.cursor = path, hashlib.sha256(), 0

    def read_up_to(self, end: int, scratch: memoryview) -> None:
        """Hash the file's bytes [cursor, end) read from disk (end None: to the end of the file)."""
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.cursor)
            while end is None or self.cursor < end:
                want = len(scratch) if end is None else min(len(scratch), end - self.cursor)
                got = f.readinto(scratch[:want])
                if not got:
                    return
                self.h.update(scratch[:got])
                self.cursor += got

    def take(self, offset: int, buf: memoryview, scratch: memoryview) -> None:
        """Hash the part of buf (the file's bytes from `offset`) that lies at or after the cursor."""
        if offset > self.cursor:
            self.read_up_to(offset, scratch)
        end = offset + len(buf)
        if end > self.cursor and offset <= self.cursor:
            self.h.update(buf[self.cursor - offset:])
            self.cursor = end


class SourceHasher:
    """sha256 of every source file, computed in a thread from fed buffers plus reads of what was not fed."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self._files = {p.name: _FileHash(p) for p in provenance_paths(ckpt)}
        self._q: queue.Queue = queue.Queue(maxsize=1)   # holds a reference to one fed buffer at most
        self._scratch = memoryview(bytearray(_CHUNK))
        self._error: BaseException | None = None
        self._done = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._q.get()) is not None:
            if self._error is not None:
                continue
            name, offset, buf = job
            try:
                fh = self._files.get(name)
                if fh is not None:
                    fh.take(offset, buf, self._scratch)
            except BaseException as exc:
                self._error = exc
            del job, buf

    def feed(self, name: str, offset: int, buf) -> None:
        """Bytes `buf` of source file `name` starting at `offset` (kept alive until hashed; not modified)."""
        self._q.put((name, offset, memoryview(buf).cast("B")))

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._q.put(None)
            self._thread.join()

    def result(self) -> list[dict]:
        """[{name, size, sha256}] of every source file, as `Checkpoint.provenance()` returns it."""
        self.close()
        if self._error is not None:
            raise self._error
        out = []
        for name, fh in self._files.items():
            fh.read_up_to(None, self._scratch)
            out.append({"name": name, "size": fh.path.stat().st_size, "sha256": fh.h.hexdigest()})
        return out
