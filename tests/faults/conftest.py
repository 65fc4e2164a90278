"""Fixtures of the fault matrix.

- `cli(*args) -> CliResult`: `moepack ARGS` in this process (exit code, stdout, stderr).
- `src_copy(name) -> Path`: a writable copy of a tiny example checkpoint, to damage.
- `converted(name, backend, hardware, tp, ep) -> Path` (tests/conftest.py): one clean conversion per session and combination
  (read-only); `out_copy(folder) -> Path`: a writable copy of it, to tamper with.
"""
from __future__ import annotations

import shutil

import pytest

from .expect import run_cli


@pytest.fixture
def cli(capsys, monkeypatch):
    def run(*args):
        return run_cli(capsys, monkeypatch, *args)

    return run


@pytest.fixture
def src_copy(example_ckpt, tmp_path):
    def make(name: str = "gpt-oss"):
        dst = tmp_path / f"src-{name}"
        shutil.copytree(example_ckpt(name), dst)
        return dst

    return make


def convert_api(src, out, backend="triton", hardware="h100", tp=1, ep=1, **kwargs):
    from moepack.convert.run import convert

    return convert(src, out, backend=backend, hardware=hardware, tp=tp, ep=ep, progress=False, **kwargs)


@pytest.fixture
def out_copy(tmp_path):
    def make(folder):
        dst = tmp_path / "out"
        shutil.copytree(folder, dst, symlinks=True)
        return dst

    return make
