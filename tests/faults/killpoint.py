"""Run `moepack ARGS` in a subprocess with a fault at a chosen point of the writing (fault tests only).

    python killpoint.py MODE ARGS...

MODE (the writes counted are `moepack.convert.writer._write_all` calls (small files) and
`moepack.convert.directio._pwrite_all` calls (part files), the renames `os.replace` calls):
- `count:FILE`    run normally; write {"writes": n, "replaces": n} to FILE at exit;
- `kill:write:N`  SIGKILL this process at the start of the N-th write;
- `kill:replace:N` SIGKILL this process just before the N-th rename;
- `pause:READY:GO` at the first write into a `.safetensors` file (after the lock is taken), create READY
  and wait (up to 60 s) until GO exists.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def _install(mode: str) -> None:
    import moepack.convert.directio as directio
    import moepack.convert.writer as writer

    counts = {"writes": 0, "replaces": 0}
    real_write, real_pwrite, real_replace = writer._write_all, directio._pwrite_all, os.replace
    kind, _, arg = mode.partition(":")
    target, _, nth = arg.partition(":")

    def before_write(fd):
        counts["writes"] += 1
        if kind == "kill" and target == "write" and counts["writes"] == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "pause" and ".safetensors" in os.readlink(f"/proc/self/fd/{fd}") and not Path(target).exists():
            ready, go = Path(target), Path(nth)
            ready.touch()
            deadline = time.monotonic() + 60
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    def write_all(fd, buf):
        before_write(fd)
        return real_write(fd, buf)

    def pwrite_all(fd, buf, offset):
        before_write(fd)
        return real_pwrite(fd, buf, offset)

    def replace(src, dst, *a, **k):
        counts["replaces"] += 1
        if kind == "kill" and target == "replace" and counts["replaces"] == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **k)

    writer._write_all = write_all
    directio._pwrite_all = pwrite_all
    os.replace = replace
    if kind == "count":
        import atexit
        atexit.register(lambda: Path(arg).write_text(json.dumps(counts)))


if __name__ == "__main__":
    _install(sys.argv[1])
    from moepack.cli import main

    main(sys.argv[2:])
