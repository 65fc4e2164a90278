"""Shared fixtures. `example_ckpt(name, size="tiny", seed=0) -> Path` writes an example checkpoint once
per session (cached); treat it as read-only — copy it (shutil.copytree) before changing anything."""
from __future__ import annotations

import pytest

from moepack.example import write_example


@pytest.fixture(scope="session")
def example_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    cache = {}

    def make(name: str, size: str = "tiny", seed: int = 0):
        key = (name, size, seed)
        if key not in cache:
            cache[key] = write_example(name, root / f"{name}-{size}-{seed}", size=size, seed=seed)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def converted(example_ckpt, tmp_path_factory):
    """`converted(name, backend="triton", hardware="h100", tp=1, ep=1) -> Path`: one clean conversion of the
    tiny example `name` per session and combination, shared by every suite. Read-only: copy before tampering."""
    root = tmp_path_factory.mktemp("converted")
    cache = {}

    def make(name: str, backend: str = "triton", hardware: str = "h100", tp: int = 1, ep: int = 1):
        from moepack.convert.run import convert

        key = (name, backend, hardware, tp, ep)
        if key not in cache:
            out = root / "-".join(map(str, key))
            convert(example_ckpt(name), out, backend=backend, hardware=hardware, tp=tp, ep=ep, progress=False)
            cache[key] = out
        return cache[key]

    return make
