"""The numeric check: each MoE layer run through the stored rank layout against a float64 reference
computed straight from the source checkpoint.

Rank path (what a server would compute): for each rank, each stored part -> `Chain.invert_local`
-> `LocalExperts` -> `moe_reference` (float32), with global expert ids mapped to the rank's local ids
(experts a rank does not own contribute nothing) and the w2 bias added by tp_rank 0 only; the partial
outputs are summed over ranks (what an all-reduce gives).

Source path (independent of every layout): the canonical tensors assembled from the source tensors the
manifest names, through `moepack.kernels.dense_reference.dense_moe_float64` (float64, gate/up split by
the SOURCE arrangement).

Tokens are random normal `[T, H]`; routing is random: k distinct experts per token, weights a softmax
of random logits. Only the experts the tokens use are dequantized.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..formats.model import Activation
from ..kernels.dense_reference import dense_moe_float64
from ..kernels.reference import LocalExperts, moe_reference
from .report import FAIL, OK, SKIP, Row
from .source_checks import load_chain
from ..formats.assemble import read_canonical
from .tensors import canonical_tensor, read_stored

# Largest relative error ||rank path - reference||_F / ||reference||_F accepted per quant scheme.
# Both paths decode the same codes: an FP4 value times an e8m0 power of two is exact in float32, an FP8
# value times a float32 scale rounds once (2^-24). What remains is float32 accumulation over H and Ip
# (~sqrt(K) * 2^-24 < 1e-5 for K <= 16k). A layout error (swapped experts, shuffled rows, a zeroed
# rank) gives errors of order 1, so these margins separate the two cleanly.
TOLERANCES = {
    "mxfp4": 1e-4,       # exact weight decode in float32; float32 accumulation only
    "fp8_block": 2e-4,   # + one float32 rounding per dequantized weight (q * block scale)
    "fp8_tensor": 2e-4,  # + one float32 rounding per dequantized weight (q * tensor scale)
}

_LOCAL_FIELD = {
    "w13_weight": "w13", "w13_weight_scale": "w13_scale", "w2_weight": "w2", "w2_weight_scale": "w2_scale",
    "w13_bias": "w13_bias", "w2_bias": "w2_bias", "w13_input_scale": "w13_input_scale",
    "w2_input_scale": "w2_input_scale",
}


def random_routing(tokens: int, hidden: int, num_experts: int, top_k: int, seed: int = 0):
    """-> (x [T, H] float32, topk_weights [T, k] float32, topk_ids [T, k] int32 distinct per token)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    ids = torch.rand(tokens, num_experts, generator=g).argsort(dim=-1)[:, :top_k].to(torch.int32)
    weights = torch.softmax(torch.randn(tokens, top_k, generator=g), dim=-1)
    return x, weights, ids


def _activation(model: dict) -> Activation:
    return Activation.from_json(model["activation"])


def source_reference(ckpt, entries: dict[str, dict], model: dict, x: torch.Tensor,
                     weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """float64 [T, H] output of the layer whose manifest entries (role -> entry) are `entries`."""
    canon = {role: read_canonical(ckpt, canonical_tensor(e)) for role, e in entries.items()}
    return dense_moe_float64(x, weights, ids, canon, model["quant"], model["arrangement"], _activation(model))


# ----------------------------------------------------------------------------- rank path
def rank_output(manifest_data: dict, rank: int, entries: dict[str, dict], readable: dict[tuple[str, int], Path],
                x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """float32 [T, H]: this rank's partial output read from its stored parts through `invert_local`."""
    model = manifest_data["model"]
    info = manifest_data["parallel"]["ranks"][rank]
    owned = info["experts"]
    position = {g: i for i, g in enumerate(owned)}
    used = [g for g in torch.unique(ids).tolist() if g in position]
    local_ids = torch.full_like(ids, -1)
    for j, g in enumerate(used):
        local_ids[ids == g] = j
    index = torch.tensor([position[g] for g in used], dtype=torch.long)
    fields = {}
    for role, e in entries.items():
        logical = load_chain(e["chain"]).invert_local(read_stored(readable[(e["name"], rank)], e["name"]))
        fields[_LOCAL_FIELD[role]] = logical.index_select(0, index)
    local = LocalExperts(quant=model["quant"], activation=_activation(model),
                         gated=model["arrangement"] != "up_only", **fields)
    return moe_reference(x, weights, local_ids, local, add_w2_bias=info["tp_rank"] == 0)


def check_layer(manifest_data: dict, layer: int, entries: dict[str, dict], readable: dict[tuple[str, int], Path], ckpt,
                tokens: int = 8, seed: int = 0) -> Row:
    """One `numeric` row for MoE layer `layer`."""
    subject = f"model.layers.{layer}.mlp.experts"
    model = manifest_data["model"]
    quant = model["quant"]
    missing = [(e["name"], r) for e in entries.values() for r in range(len(e["ranks"])) if (e["name"], r) not in readable]
    if missing:
        return Row(subject, "numeric", SKIP, f"{missing[0][0]} on rank {missing[0][1]} failed an earlier check")
    if ckpt is None:
        return Row(subject, "numeric", SKIP, "needs the source checkpoint (--source)")
    hidden = entries["w2_weight"]["logical_shape"][1]
    x, weights, ids = random_routing(tokens, hidden, model["num_experts"], model["top_k"], seed + layer)
    try:
        ref = source_reference(ckpt, entries, model, x, weights, ids)
        got = sum(rank_output(manifest_data, r, entries, readable, x, weights, ids)
                  for r in range(manifest_data["parallel"]["world_size"]))
    except Exception as e:  # a wrong layout can break shapes anywhere in the kernel path
        return Row(subject, "numeric", FAIL, f"cannot run the layer through the rank layout: "
                                             f"{e.__class__.__name__}: {e}")
    diff = got.to(torch.float64) - ref
    max_abs = float(diff.abs().max())
    rel = float(diff.norm() / ref.norm().clamp(min=1e-30))
    tol = TOLERANCES[quant]
    detail = (f"max abs err {max_abs:.3g}, rel err {rel:.3g} (tol {tol:g}, {quant}); {tokens} tokens, "
              f"top-{model['top_k']}, {manifest_data['parallel']['world_size']} ranks summed")
    if not rel <= tol:          # NaN fails too
        return Row(subject, "numeric", FAIL, detail)
    return Row(subject, "numeric", OK, detail)
