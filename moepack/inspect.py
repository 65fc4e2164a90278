"""`inspect`: what a source checkpoint is, as a JSON-able dict (headers and config only, no tensor data)."""
from __future__ import annotations

from dataclasses import asdict

import torch

from .errors import PlanError
from .layouts.generic import BlockAlignedTpSlice, TpSlice
from .layouts.plan import plan_layer, stored_shapes
from .layouts.targets import get_target

from .formats.detect import describe
from .formats.model import ModelDescription
from .source.checkpoint import Checkpoint


def _layer_entry(ckpt: Checkpoint, spec) -> dict:
    tensors = {role: {"shape": list(ct.shape), "dtype": ct.dtype, "pieces": len(ct.pieces)}
               for role, ct in spec.tensors.items()}
    nbytes = sum(ckpt.info(p.name).nbytes for ct in spec.tensors.values() for p in ct.pieces)
    return {"index": spec.index, "num_experts": spec.num_experts, "hidden": spec.hidden,
            "intermediate": spec.intermediate, "quant": spec.quant, "arrangement": spec.arrangement,
            "has_bias": spec.has_bias, "activation": asdict(spec.activation), "expert_bytes": nbytes,
            "tensors": tensors}


def describe_json(ckpt: Checkpoint, desc: ModelDescription) -> dict:
    """The inspect dict of an opened, described checkpoint."""
    layers = [_layer_entry(ckpt, spec) for spec in desc.moe_layers]
    summary = desc.summary()
    return {
        "source": ckpt.source.to_json(),
        **summary,
        "passthrough": len(desc.passthrough),
        "top_k": desc.routing.top_k,
        "layers": layers,
        "expert_bytes": sum(x["expert_bytes"] for x in layers),
        "passthrough_bytes": sum(ckpt.info(n).nbytes for n in desc.passthrough),
        "files": [p.name for p in ckpt.files],
        "extra_files": [p.name for p in ckpt.extra_files],
    }


def inspect_model(src, revision: str | None = None) -> dict:
    """Open SRC (folder or Hub id), detect its format; returns a JSON-able dict:
    source, family, quant, num_layers, moe_layers, num_experts (E), hidden (H), intermediate (I), top_k,
    arrangement, has_bias, activation, routing, layers (per MoE layer), expert_bytes, passthrough_bytes."""
    ckpt = Checkpoint.open(src, revision)
    return describe_json(ckpt, describe(ckpt))


def _nbytes(shape, dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def plan_json(desc: ModelDescription, backend: str, hardware: str, tp: int = 1, ep: int = 1,
              variant: str | None = None) -> dict:
    """The per-rank plan of converting `desc` for a target: JSON-able, what `inspect` and `convert --dry-run` show.

    Per rank: its experts, intermediate rows before (`intermediate`) and after (`intermediate_padded`) padding,
    stored bytes, and padding bytes = stored bytes - the bytes of the rank's unpadded share of the source
    (tensors split along I count I_r/I of their experts' bytes; replicated tensors count whole).
    Raises PlanError for an impossible plan (tp/ep not dividing, unsupported target, alignment impossible)."""
    target = get_target(backend, hardware, desc.quant, variant)
    plans = [plan_layer(spec, target, tp, ep) for spec in desc.moe_layers]
    world = plans[0].world_size if plans else tp
    stored = [0] * world
    logical = [0.0] * world
    for spec, plan in zip(desc.moe_layers, plans):
        shapes = stored_shapes(spec, plan)
        for role, ct in spec.tensors.items():
            shape, dtype = shapes[role]
            src_bytes = _nbytes(ct.shape, getattr(torch, ct.dtype))
            split = any(isinstance(s, (TpSlice, BlockAlignedTpSlice)) for s in plan.chains[role].steps)
            for r in plan.ranks:
                stored[r.rank] += _nbytes(shape, dtype)
                share = len(r.experts) / spec.num_experts
                if split:
                    share *= (r.rows[1] - r.rows[0]) / spec.intermediate
                logical[r.rank] += src_bytes * share
    first = plans[0] if plans else None
    ranks = []
    for r in (first.ranks if first else []):
        pad = max(0, stored[r.rank] - int(round(logical[r.rank])))
        ranks.append({"rank": r.rank, "ep_rank": r.ep_rank, "tp_rank": r.tp_rank, "experts": list(r.experts),
                      "intermediate": r.rows[1] - r.rows[0], "intermediate_padded": first.intermediate_padded,
                      "bytes": stored[r.rank], "padding_bytes": pad,
                      "padding_fraction": pad / stored[r.rank] if stored[r.rank] else 0.0})
    warnings = sorted({w for p in plans for w in p.warnings})
    return {"target": target.to_json() | {"arch": target.arch}, "tp": tp, "ep": ep, "world_size": world,
            "intermediate_per_rank": first.intermediate_per_rank if first else [],
            "intermediate_padded": first.intermediate_padded if first else 0,
            "hidden_padded": first.hidden_padded if first else 0,
            "ranks": ranks, "bytes": sum(stored), "padding_bytes": sum(x["padding_bytes"] for x in ranks),
            "warnings": warnings,
            "chain_w13": first.chains["w13_weight"].describe() if first else ""}


def inspect(src, revision: str | None = None, tp: int = 1, ep: int = 1, backend: str | None = None,
            hardware: str | None = None, variant: str | None = None) -> dict:
    """`moepack inspect`: the model (`model`) and, when backend and hardware are given, the plan (`plan`)."""
    if (backend is None) != (hardware is None):
        raise PlanError("--backend and --hardware go together (see `moepack targets`)")
    ckpt = Checkpoint.open(src, revision)
    desc = describe(ckpt)
    info = describe_json(ckpt, desc)
    out = {"source": info["source"].get("repo_id") or info["source"].get("path"), "model": info}
    if backend is not None:
        out["plan"] = plan_json(desc, backend, hardware, tp, ep, variant)
    elif tp != 1 or ep != 1:
        raise PlanError("--tp/--ep need a target: add --backend and --hardware (see `moepack targets`)")
    return out
