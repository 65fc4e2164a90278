"""moepack's readers never unpickle: with every unpickling entry point booby-trapped, loading (with the
full hash check), running a layer and the smoke run still work."""
from __future__ import annotations

import pickle

import pytest
import torch

from moepack.runtime import load
from moepack.runtime.smoke import run_smoke


@pytest.fixture
def no_unpickling(monkeypatch):
    def trap(*a, **kw):
        raise AssertionError("an unpickler was reached")

    class TrappedUnpickler(pickle.Unpickler):    # a class still: torch subclasses pickle.Unpickler on import
        def __init__(self, *a, **kw):
            trap()

    for mod, attr in [(torch, "load"), (pickle, "load"), (pickle, "loads"), (torch.serialization, "load")]:
        monkeypatch.setattr(mod, attr, trap)
    monkeypatch.setattr(pickle, "Unpickler", TrappedUnpickler)


def test_trap_is_armed(no_unpickling):
    with pytest.raises(AssertionError):
        pickle.loads(pickle.dumps(1))
    with pytest.raises(AssertionError):
        torch.load("anything")
    with pytest.raises(AssertionError):
        pickle.Unpickler(None)


@pytest.mark.parametrize("name", ["gpt-oss", "qwen3-moe"])
def test_load_verify_and_run_never_unpickle(converted, no_unpickling, name):
    folder = converted(name, tp=2)
    ck = load(folder, rank=1, check="full")
    layer = min(ck.moe_layers)
    H, E = ck.manifest["model"]["hidden"], ck.manifest["model"]["num_experts"]
    ids = torch.arange(4, dtype=torch.int32).reshape(2, 2) % E
    out = ck.moe_layers[layer](torch.randn(2, H), torch.full((2, 2), 0.5), ids)
    assert out.shape == (2, H) and torch.isfinite(out).all()
    assert all(r["ok"] for r in run_smoke(folder, tokens=4))
