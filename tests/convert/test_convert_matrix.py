"""Every example format x every target layout for its quant x tp in {1, 2, 4, 8 where valid} (+ EP cases):
gathering the ranks' tensors and inverting the manifest's chains gives back every source expert tensor
bit for bit (reconstruct_experts), and every non-expert tensor is copied byte-identical."""
from __future__ import annotations


import pytest
import torch
import xxhash

from moepack.convert.manifest import Manifest
from moepack.convert.reconstruct import read_shared, reconstruct_experts
from moepack.convert.run import convert
from moepack.errors import PlanError
from moepack.example import EXAMPLES
from moepack.formats.detect import describe
from moepack.layouts.targets import list_targets
from moepack.source.checkpoint import Checkpoint

QUANT = {"gpt-oss": "mxfp4", "deepseek-v4": "mxfp4", "deepseek-v3": "fp8_block", "qwen3-moe": "fp8_block",
         "nemotron-h": "fp8_tensor"}


def _layouts(quant: str):
    """One target per distinct stored layout: the Triton layout does not depend on the hardware (targets.py),
    AITER and flashinfer differ per arch and variant."""
    seen, out = set(), []
    for t in list_targets():
        if t.quant != quant:
            continue
        key = (t.backend, t.variant) if t.backend == "triton" else (t.backend, t.arch, t.variant)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


CASES = [(name, t.backend, t.hardware, t.variant, tp, 1)
         for name in EXAMPLES for t in _layouts(QUANT[name]) for tp in (1, 2, 4, 8)]
CASES += [("gpt-oss", "aiter", "mi355x", "interleave", 2, 2), ("deepseek-v3", "triton", "h100", "default", 4, 2),
          ("nemotron-h", "flashinfer-cutlass", "h100", "default", 8, 4), ("deepseek-v4", "triton", "h100", "default", 4, 4)]


def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _bytes(t: torch.Tensor) -> bytes:
    return _u8(t).numpy().tobytes()


@pytest.mark.parametrize("name,backend,hardware,variant,tp,ep", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}-tp{c[4]}-ep{c[5]}" for c in CASES])
def test_reconstructs_source_bit_exact(tmp_path, example_ckpt, name, backend, hardware, variant, tp, ep):
    src = example_ckpt(name)
    out = tmp_path / "out"
    try:
        convert(src, out, backend, hardware, tp=tp, ep=ep, variant=variant, progress=False)
    except PlanError as e:          # "where valid": the plan refuses, and says why
        assert not out.exists() or not (out / "manifest.json").exists()
        pytest.skip(f"invalid plan: {e}")
    m = Manifest.load(out)
    ckpt = Checkpoint.open(src)
    desc = describe(ckpt)
    fnuz = m["target"]["arch"] == "gfx942" and desc.quant.startswith("fp8")

    expert_sources = {p.name for spec in desc.moe_layers for ct in spec.tensors.values() for p in ct.pieces}
    seen = set()
    for sname, t in reconstruct_experts(out, m):
        seen.add(sname)
        s = ckpt.get(sname)
        assert t.dtype == s.dtype and t.shape == s.shape, sname
        got, want = _u8(t), _u8(s)
        diff = got != want
        if fnuz and s.dtype == torch.float8_e4m3fn:
            # e4m3fnuz has no -0: the only bytes allowed to change are fp8 -0 (0x80) -> +0
            assert bool((want[diff] == 0x80).all()) and bool((got[diff] == 0).all()), sname
        else:
            assert not bool(diff.any()), sname
    assert seen == expert_sources

    shared = dict(read_shared(out, m))
    assert set(shared) | expert_sources == set(ckpt.tensor_names())
    for n, t in shared.items():
        assert _bytes(t) == _bytes(ckpt.get(n)), n

    # stored shapes / hashes are what the manifest says, rank by rank
    from safetensors import safe_open
    e = m["experts"][0]
    for r, rec in enumerate(e["ranks"]):
        assert rec["file"] in m.rank_files(r)
        with safe_open(str(out / rec["file"]), "pt") as f:
            t = f.get_tensor(e["name"])
        assert list(t.shape) == rec["shape"]
        assert xxhash.xxh3_128(_bytes(t)).hexdigest() == rec["xxh3_128"]
    assert m["parallel"]["world_size"] == tp and len(m["parallel"]["ranks"]) == tp
