"""Recognise a checkpoint's format family and describe its MoE layers.

The family comes from config.json's `quantization_config.quant_method` (and, for plain `fp8`, the
model type); each family module then cross-checks config against tensor names, dtypes and shapes.
Only headers and config are read here: no tensor data.
"""
from __future__ import annotations

from ..errors import FormatError
from ..source.checkpoint import Checkpoint
from . import deepseek_fp8, gpt_oss, modelopt_fp8, mxfp4_separated
from .model import ModelDescription

FAMILIES = (gpt_oss.FAMILY, deepseek_fp8.DEEPSEEK_FAMILY, deepseek_fp8.QWEN3_FAMILY,
            modelopt_fp8.FAMILY, mxfp4_separated.FAMILY)
QUANT_METHODS = {
    "mxfp4": gpt_oss.describe,
    "fp8": deepseek_fp8.describe,
    "modelopt": modelopt_fp8.describe,
    mxfp4_separated.QUANT_METHOD: mxfp4_separated.describe,
}


def _check_routing(desc: ModelDescription) -> None:
    r = desc.routing
    for spec in desc.moe_layers:
        E = spec.num_experts
        if not 1 <= r.top_k <= E:
            raise FormatError(f"config.json: num_experts_per_tok {r.top_k} is not in 1..{E} (experts)")
        if r.n_group < 1 or E % r.n_group:
            raise FormatError(f"config.json: n_group {r.n_group} does not divide the {E} experts")
        if not 1 <= r.topk_group <= r.n_group:
            raise FormatError(f"config.json: topk_group {r.topk_group} is not in 1..n_group {r.n_group}")


def describe(ckpt: Checkpoint) -> ModelDescription:
    """The ModelDescription of an opened checkpoint; FormatError naming the key or tensor at fault."""
    qc = ckpt.config.get("quantization_config")
    if not isinstance(qc, dict):
        raise FormatError(f"{ckpt.root / 'config.json'}: no quantization_config; moepack converts MXFP4 / FP8 MoE "
                          f"checkpoints (quant_method one of {', '.join(QUANT_METHODS)})")
    method = qc.get("quant_method")
    describe_family = QUANT_METHODS.get(method)
    if describe_family is None:
        raise FormatError(f"config.json: unknown quantization_config.quant_method {method!r} "
                          f"(known: {', '.join(QUANT_METHODS)})")
    desc = describe_family(ckpt)
    if not desc.moe_layers:
        raise FormatError(f"{ckpt.root}: no MoE layers found")
    _check_routing(desc)
    return desc
