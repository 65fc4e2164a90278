"""A minimal converter for the verify tests, used only while moepack.convert.run.convert is not there:
describe -> plan_layer -> chain.apply -> one safetensors file per rank + manifest (docs/DESIGN.md format)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
import xxhash
from safetensors.torch import save_file

from moepack.formats.assemble import read_canonical
from moepack.formats.detect import describe
from moepack.layouts.plan import plan_layer
from moepack.layouts.targets import get_target
from moepack.source.checkpoint import Checkpoint

_ST = {torch.uint8: "U8", torch.int8: "I8", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
       torch.float8_e4m3fn: "F8_E4M3", torch.float8_e4m3fnuz: "F8_E4M3FNUZ", torch.float8_e8m0fnu: "F8_E8M0",
       torch.int32: "I32", torch.int64: "I64"}


def _xxh_t(t):
    return xxhash.xxh3_128(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _sha_f(p):
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def stand_in_convert(src, out, backend, hardware, tp=1, ep=1, variant=None):
    out = Path(out)
    out.mkdir(parents=True)
    ckpt = Checkpoint.open(src)
    desc = describe(ckpt)
    target = get_target(backend, hardware, desc.quant, variant)
    rank_tensors = [dict() for _ in range(tp)]
    experts = []
    plans = {}
    for spec in desc.moe_layers:
        plan = plans[spec.index] = plan_layer(spec, target, tp, ep)
        for role, ct in spec.tensors.items():
            name = f"model.layers.{spec.index}.mlp.experts.{role}"
            parts = plan.chains[role].apply(read_canonical(ckpt, ct))
            for r, p in enumerate(parts):
                rank_tensors[r][name] = p.contiguous()
            experts.append({"layer": spec.index, "role": role, "name": name, "logical_shape": list(ct.shape),
                            "logical_dtype": ct.dtype,
                            "sources": [{"name": p.name, "expert": p.expert, "rows": list(p.rows),
                                         "shape": list(p.shape), "dtype": p.dtype} for p in ct.pieces],
                            "chain": plan.chains[role].to_json(),
                            "ranks": [{"file": f"model-rank-{r}-part-0.safetensors", "dtype": _ST[p.dtype],
                                       "shape": list(p.shape), "xxh3_128": _xxh_t(p)} for r, p in enumerate(parts)]})
    files = {}
    for r, ts in enumerate(rank_tensors):
        f = f"model-rank-{r}-part-0.safetensors"
        save_file(ts, str(out / f))
        files[f] = {"rank": r, "size": (out / f).stat().st_size, "sha256": _sha_f(out / f)}
    shared_t = {n: ckpt.get(n).contiguous() for n in desc.passthrough}
    save_file(shared_t, str(out / "shared-part-0.safetensors"))
    files["shared-part-0.safetensors"] = {"rank": None, "size": (out / "shared-part-0.safetensors").stat().st_size,
                                          "sha256": _sha_f(out / "shared-part-0.safetensors")}
    shutil.copy(ckpt.root / "config.json", out / "config.json")
    files["config.json"] = {"rank": None, "size": (out / "config.json").stat().st_size,
                            "sha256": _sha_f(out / "config.json")}
    first = plans[desc.moe_layers[0].index]
    summary = desc.summary()
    data = {
        "moepack_manifest": 2, "tool": {"moepack": "0.1.0"}, "created_utc": "2026-01-01T00:00:00Z",
        "source": {"path": str(src), "repo_id": None, "revision": None, "commit": None, "family": desc.family,
                   "files": ckpt.provenance()},
        "target": {"backend": backend, "hardware": hardware, "arch": target.arch, "quant": desc.quant,
                   "layout_version": 1},
        "parallel": {"tp": tp, "ep": ep, "world_size": tp,
                     "ranks": [{"rank": ri.rank, "ep_rank": ri.ep_rank, "tp_rank": ri.tp_rank,
                                "experts": list(ri.experts), "files": [f"model-rank-{ri.rank}-part-0.safetensors"]}
                               for ri in first.ranks]},
        "model": {**{k: summary[k] for k in ("family", "quant", "num_layers", "moe_layers", "num_experts", "hidden",
                                             "intermediate", "arrangement", "has_bias", "activation", "routing")},
                  "intermediate_per_rank": first.intermediate_per_rank,
                  "intermediate_padded": first.intermediate_padded, "top_k": desc.routing.top_k},
        "files": files, "experts": experts,
        "shared": {n: {"file": "shared-part-0.safetensors", "dtype": _ST[t.dtype], "shape": list(t.shape),
                       "xxh3_128": _xxh_t(t)} for n, t in shared_t.items()},
    }
    (out / "manifest.json").write_text(json.dumps(data, indent=1))
    return data
