"""moepack reads only safetensors and JSON: with every unpickling entry point booby-trapped, `inspect`,
`convert`, `verify --source` (numeric level: it reads the source and the output) and `load` / `run` work
end to end. A checkpoint shipping a pickle (`pytorch_model.bin`) is never touched either."""
from __future__ import annotations

import pickle

import pytest
import torch

from moepack.runtime.loader import load

REACHED: list[str] = []


@pytest.fixture
def unpickling_trapped(monkeypatch):
    REACHED.clear()

    def trap(what):
        def reached(*a, **k):
            REACHED.append(what)
            raise AssertionError(f"{what} was reached")
        return reached

    class TrappedUnpickler(pickle.Unpickler):
        def __init__(self, *a, **k):
            REACHED.append("pickle.Unpickler")
            raise AssertionError("pickle.Unpickler was reached")

    for mod, attr in [(torch, "load"), (torch.serialization, "load"), (pickle, "load"), (pickle, "loads")]:
        monkeypatch.setattr(mod, attr, trap(f"{mod.__name__}.{attr}"))
    monkeypatch.setattr(pickle, "Unpickler", TrappedUnpickler)
    with pytest.raises(AssertionError):
        torch.load("anything")                 # the trap itself works
    REACHED.clear()
    return REACHED


def test_inspect_convert_verify_load_never_unpickle(cli, src_copy, tmp_path, unpickling_trapped):
    src = src_copy("gpt-oss")
    bait = src / "pytorch_model.bin"
    torch.save({"x": torch.zeros(1)}, bait)    # a pickle next to the safetensors: must stay unread
    out = tmp_path / "out"
    steps = [
        ("inspect", src, "--backend", "aiter", "--hardware", "mi355x", "--tp", "2"),
        ("convert", src, out, "--backend", "aiter", "--hardware", "mi355x", "--tp", "2", "--no-progress"),
        ("verify", out, "--source", src, "--level", "numeric"),
        ("run", out, "--tokens", "4"),
    ]
    for args in steps:
        res = cli(*args)
        assert res.code == 0, f"{args[0]}: exit {res.code}: {res.err}"
    for rank in (0, 1):
        load(out, rank=rank, check="full", allow_emulation=True)
    assert unpickling_trapped == []
    assert "pytorch_model.bin" not in (out / "manifest.json").read_text()
