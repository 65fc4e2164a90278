"""Fixtures of the runtime tests: `converted(name, backend, hardware, tp, ep) -> Path`, one conversion per
session and combination (read-only: copy it with `fresh_copy` before changing anything)."""
from __future__ import annotations

import shutil

import pytest

from moepack.convert.run import convert


@pytest.fixture(scope="session")
def converted(example_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("converted")
    cache = {}

    def make(name: str, backend: str = "triton", hardware: str = "h100", tp: int = 1, ep: int = 1):
        key = (name, backend, hardware, tp, ep)
        if key not in cache:
            out = root / "-".join(map(str, key))
            convert(example_ckpt(name), out, backend=backend, hardware=hardware, tp=tp, ep=ep)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture
def fresh_copy(tmp_path):
    """A writable copy of a converted folder, to tamper with."""
    def make(folder):
        dst = tmp_path / "out"
        shutil.copytree(folder, dst)
        return dst

    return make
