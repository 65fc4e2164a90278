"""`inspect`: what a source checkpoint is, as a JSON-able dict (headers and config only, no tensor data)."""
from __future__ import annotations

from dataclasses import asdict

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
