"""Fixtures of the runtime tests. `converted(name, backend, hardware, tp, ep) -> Path` (tests/conftest.py) gives
one conversion per session and combination (read-only: copy it with `fresh_copy` before changing anything)."""
from __future__ import annotations

import shutil

import pytest


@pytest.fixture
def fresh_copy(tmp_path):
    """A writable copy of a converted folder, to tamper with."""
    def make(folder):
        dst = tmp_path / "out"
        shutil.copytree(folder, dst)
        return dst

    return make
