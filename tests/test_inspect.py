"""inspect_model: the JSON-able summary of a source checkpoint."""
from __future__ import annotations

import json
import shutil

import pytest

from ckpt_edit import index_of
from moepack.example import EXAMPLES, example_dims
from moepack.inspect import inspect_model

ARRANGEMENT = {"gpt-oss": "interleaved", "deepseek-v3": "separate", "qwen3-moe": "separate",
               "nemotron-h": "up_only", "deepseek-v4": "separate"}
QUANT = {"gpt-oss": "mxfp4", "deepseek-v3": "fp8_block", "qwen3-moe": "fp8_block",
         "nemotron-h": "fp8_tensor", "deepseek-v4": "mxfp4"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_inspect_examples(example_ckpt, name):
    root = example_ckpt(name)
    out = inspect_model(str(root))
    json.dumps(out)
    d = example_dims(name)
    assert (out["num_experts"], out["hidden"], out["intermediate"]) == (d.experts, d.hidden, d.inter)
    assert (out["quant"], out["arrangement"], out["top_k"]) == (QUANT[name], ARRANGEMENT[name], d.top_k)
    assert out["source"]["path"] == str(root.resolve())
    assert len(out["layers"]) == len(out["moe_layers"]) >= 2
    assert out["expert_bytes"] + out["passthrough_bytes"] == index_of(root)["metadata"]["total_size"]
    assert out["expert_bytes"] > out["passthrough_bytes"] > 0


def test_inspect_hub_snapshot_offline(example_ckpt, tmp_path, monkeypatch):
    commit = "89abcdef" * 5
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny-moe"
    shutil.copytree(example_ckpt("nemotron-h"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = inspect_model("acme/tiny-moe")
    assert out["source"]["repo_id"] == "acme/tiny-moe" and out["source"]["commit"] == commit
    assert (out["family"], out["intermediate"], out["arrangement"]) == ("modelopt-fp8", 248, "up_only")
