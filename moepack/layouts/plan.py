"""Per-layer layout plan: one `Chain` per canonical tensor role, and what every rank holds.

Chain of a role = [prefix] + [partitions] + [rank-local suffix of the target]:
- prefix: `deinterleave_gate_up` on the w13 rows, only when the SOURCE arrangement is "interleaved";
- partitions: `ep_select(ep)` when ep > 1, then over tp // ep ranks: `tp_slice` (mxfp4: granule 32
  elements; fp8_tensor: 1 row), `block_aligned_tp_slice` (fp8_block) or `replicate` (tensors without
  the intermediate dim: w2_bias, per-tensor scales, input scales);
- suffix: `Target.local_steps`.
After the partitions every target sees the same rank-local logical form (docs/DESIGN.md):
w13 [E_l, 2*Ip, Kst] as [gate; up] (up_only [E_l, Ip, Kst]), w2 [E_l, H, Ip (/2 packed, /32 scales)].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import PlanError
from ..formats.model import MoELayerSpec
from ..numerics import FP8_BLOCK, MX_BLOCK, E8M0_ONE
from .generic import (BlockAlignedTpSlice, DeinterleaveGateUp, EpSelect, Replicate, TpSlice,
                      round_up, tp_ranges)
from .targets import Target
from .transform import Chain, Partition, Step

PADDING_WARN = 0.25     # warn when more than this fraction of the stored intermediate rows is padding
_W13_ROWS = ("w13_weight", "w13_weight_scale", "w13_bias")
_W2_COLS = ("w2_weight", "w2_weight_scale")


@dataclass(frozen=True)
class RankInfo:
    rank: int                      # ep_rank * (tp // ep) + tp_rank
    ep_rank: int
    tp_rank: int
    experts: tuple[int, ...]       # global expert ids, in local order
    rows: tuple[int, int]          # (start, stop) of the unpadded intermediate slice, the same in each half
    local_start: int = 0           # where row `start` sits in the rank's padded half (block-aligned FP8: start % 128)


@dataclass
class LayerPlan:
    index: int                     # layer index
    target: Target
    tp: int
    ep: int
    chains: dict[str, Chain]
    ranks: list[RankInfo]
    intermediate_per_rank: list[int]     # unpadded, per tp rank
    intermediate_padded: int             # Ip, common to all ranks
    hidden_padded: int                   # the K of w13 as stored (AITER may pad it; == hidden otherwise)
    padding_fraction: float              # share of stored intermediate rows that are padding
    warnings: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.tp


def _tp_partition(spec: MoELayerSpec, role: str, tpl: int, Ip: int) -> Partition:
    I, q = spec.intermediate, spec.quant
    halves = 2 if spec.gated else 1
    if role in _W13_ROWS:
        dim, h = 1, halves
    elif role in _W2_COLS:
        dim, h = 2, 1
    else:
        return Replicate(tpl)
    if q == "fp8_tensor" and role.endswith("_scale"):
        return Replicate(tpl)
    scale = role.endswith("_scale")
    if q == "fp8_block":
        return BlockAlignedTpSlice(tpl, dim, h, I, Ip, FP8_BLOCK, 1, scale, 1.0 if scale else 0)
    if q == "mxfp4":
        if role == "w2_weight":            # packed: 2 elements per byte
            return TpSlice(tpl, dim, h, MX_BLOCK // 2, I // 2, Ip // 2, 0)
        if role == "w2_weight_scale":      # one e8m0 code per 32 elements
            return TpSlice(tpl, dim, h, 1, I // MX_BLOCK, Ip // MX_BLOCK, E8M0_ONE)
        return TpSlice(tpl, dim, h, MX_BLOCK, I, Ip, E8M0_ONE if scale else 0)
    return TpSlice(tpl, dim, h, 1, I, Ip, 0)


def _global_steps(spec: MoELayerSpec, role: str, tpl: int, ep: int, Ip: int) -> list[Step]:
    steps: list[Step] = []
    if spec.arrangement == "interleaved" and role in _W13_ROWS:
        if spec.quant == "fp8_block":
            raise PlanError(f"layer {spec.index}: interleaved gate/up rows cannot be block-FP8 (scale blocks span both halves)")
        if not (spec.quant == "fp8_tensor" and role.endswith("_scale")):
            steps.append(DeinterleaveGateUp(1))
    if ep > 1:
        steps.append(EpSelect(ep))
    steps.append(_tp_partition(spec, role, tpl, Ip))
    return steps


def _meta(shape, dtype: str) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=getattr(torch, dtype), device="meta")


def plan_layer(spec: MoELayerSpec, target: Target, tp: int, ep: int) -> LayerPlan:
    """Plan layer `spec` for `target` over `tp` ranks, `ep` of them expert groups (tp // ep TP ranks each).

    PlanError: ep does not divide E or tp; tp // ep ranks cannot split I at the granule; the target's
    quant differs; any transform's precondition fails on this layer's shapes (checked on meta tensors)."""
    E, I = spec.num_experts, spec.intermediate
    where = f"layer {spec.index}"
    if tp < 1 or ep < 1:
        raise PlanError(f"{where}: --tp {tp} and --ep {ep} must be >= 1")
    if tp % ep:
        raise PlanError(f"{where}: --ep {ep} does not divide --tp {tp}")
    if E % ep:
        raise PlanError(f"{where}: --ep {ep} does not divide the {E} experts")
    if target.quant != spec.quant:
        raise PlanError(f"{where}: target {target.backend}/{target.hardware} is for {target.quant}, the model is {spec.quant}")
    tpl = tp // ep
    granule = MX_BLOCK if spec.quant == "mxfp4" else 1
    try:
        ranges = tp_ranges(I, tpl, granule)
    except PlanError as e:
        raise PlanError(f"{where}: {e} (--tp {tp} --ep {ep})") from None
    align = target.alignment
    if spec.quant == "mxfp4":
        align = math.lcm(align, MX_BLOCK)
    local_start = [0] * tpl
    if spec.quant == "fp8_block":
        align = math.lcm(align, FP8_BLOCK)
        spans = [FP8_BLOCK * (-(-b // FP8_BLOCK) - a // FP8_BLOCK) for a, b in ranges]
        local_start = [a % FP8_BLOCK for a, _ in ranges]
        Ip = round_up(max(spans), align)
    else:
        Ip = round_up(max(b - a for a, b in ranges), align)
    per_rank = [b - a for a, b in ranges]

    chains: dict[str, Chain] = {}
    for role, ct in spec.tensors.items():
        steps = _global_steps(spec, role, tpl, ep, Ip)
        try:
            x = _meta(ct.shape, ct.dtype)
            local = Chain(tuple(steps)).apply(x)[0]
            steps += list(target.local_steps(role, spec.gated, tuple(local.shape), ct.dtype))
            chain = Chain(tuple(steps))
            chain.apply(x)              # every precondition, on shapes only
        except PlanError as e:
            raise PlanError(f"{where} {role} {tuple(ct.shape)} for {target.backend}/{target.hardware}: {e}") from None
        except RuntimeError as e:       # a view that does not fit: report it as a plan problem
            raise PlanError(f"{where} {role} {tuple(ct.shape)} for {target.backend}/{target.hardware}: {e}") from None
        chains[role] = chain

    ranks = []
    El = E // ep
    for er in range(ep):
        for tr in range(tpl):
            ranks.append(RankInfo(er * tpl + tr, er, tr, tuple(range(er * El, (er + 1) * El)),
                                  ranges[tr], local_start[tr]))
    frac = 1.0 - sum(per_rank) / (tpl * Ip)
    warnings = []
    if frac > PADDING_WARN:
        warnings.append(f"{where}: {frac:.0%} of the stored intermediate rows are padding "
                        f"(I={I} over {tpl} TP ranks -> {max(per_rank)} rows, padded to {Ip})")
    if len(set(per_rank)) > 1:
        warnings.append(f"{where}: uneven TP split of I={I}: rows per rank {per_rank}")
    Hp = target.hidden_padded(spec.hidden)
    if Hp != spec.hidden:
        warnings.append(f"{where}: {target.backend} stores w13 with K padded {spec.hidden} -> {Hp} (zeros); "
                        f"activations must be zero-padded to match")
    if target.arch == "gfx942" and spec.quant.startswith("fp8"):
        warnings.append(f"{where}: gfx942 e4m3fnuz has no -0: FP8 -0 bytes are stored as +0 (same value)")
    return LayerPlan(spec.index, target, tp, ep, chains, ranks, per_rank, Ip, Hp, frac, warnings)


def rank_local_shapes(spec: MoELayerSpec, plan: LayerPlan) -> dict[str, tuple[int, ...]]:
    """role -> the rank-local LOGICAL shape (after the partitions, before the target's suffix)."""
    out = {}
    for role, ct in spec.tensors.items():
        chain = plan.chains[role]
        out[role] = tuple(Chain(chain.steps[:len(chain.steps) - len(chain.local_steps)]).apply(_meta(ct.shape, ct.dtype))[0].shape)
    return out


def stored_shapes(spec: MoELayerSpec, plan: LayerPlan) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """role -> (shape, dtype) of the tensor each rank stores."""
    out = {}
    for role, ct in spec.tensors.items():
        y = plan.chains[role].apply(_meta(ct.shape, ct.dtype))[0]
        out[role] = (tuple(y.shape), y.dtype)
    return out


__all__ = ["RankInfo", "LayerPlan", "plan_layer", "rank_local_shapes", "stored_shapes"]
