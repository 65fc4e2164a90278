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
