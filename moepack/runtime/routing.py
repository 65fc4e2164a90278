"""Router logits -> (topk_weights, topk_ids), for the routing kinds of `moepack.formats.model.Routing`.

- "topk_softmax" (gpt-oss): the router linear's bias is already inside `logits` (the caller computed
  x @ W.T + b); top-k on the logits, softmax over those k. `bias` must be None.
- "softmax_topk" (Qwen3-MoE): softmax over all E, top-k, renormalised to sum 1 if `norm_topk_prob`.
- "sigmoid_noaux" (DeepSeek-V3, NemotronH): s = sigmoid(logits); selection on s + bias
  (`bias` = e_score_correction_bias [E], selection only); with n_group > 1 the E experts form n_group
  equal groups, a group scores the sum of its two best biased scores, the best `topk_group` groups stay
  and the top-k is taken inside them. Weights are the UNBIASED s of the chosen experts, divided by their
  sum if `norm_topk_prob`, times `routed_scaling_factor`.

Ties are broken towards the lower index (torch.topk on CPU is not guaranteed to do that, so selection
sorts stably). Weights are float32 [T, k]; ids int32 [T, k], ordered by descending selection score.
"""
from __future__ import annotations

import torch

from ..formats.model import Routing


def _topk_stable(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[T, N] -> [T, k] int64 indices of the k largest, ties to the lower index."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[:, :k]


def route(logits: torch.Tensor, routing: Routing, bias: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] float -> (topk_weights [T, k] float32, topk_ids [T, k] int32). See module docstring."""
    if logits.dim() != 2:
        raise ValueError(f"router logits must be [T, E], got {tuple(logits.shape)}")
    T, E = logits.shape
    k = routing.top_k
    if not 1 <= k <= E:
        raise ValueError(f"top_k {k} must be in [1, E={E}]")
    x = logits.to(torch.float32)

    if routing.kind == "topk_softmax":
        if bias is not None:
            raise ValueError("topk_softmax: add the router bias to the logits; `bias` is for sigmoid_noaux only")
        ids = _topk_stable(x, k)
        weights = torch.softmax(torch.gather(x, 1, ids), dim=-1)
    elif routing.kind == "softmax_topk":
        if bias is not None:
            raise ValueError("softmax_topk takes no bias")
        probs = torch.softmax(x, dim=-1)
        ids = _topk_stable(probs, k)
        weights = torch.gather(probs, 1, ids)
        if routing.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
    elif routing.kind == "sigmoid_noaux":
        scores = torch.sigmoid(x)
        biased = scores if bias is None else scores + bias.to(torch.float32).reshape(1, E)
        G, kg = routing.n_group, routing.topk_group
        if G > 1:
            if E % G or not 1 <= kg <= G:
                raise ValueError(f"sigmoid_noaux: E={E} not divisible into n_group={G}, or topk_group={kg} invalid")
            grouped = biased.reshape(T, G, E // G)
            top2 = min(2, E // G)
            group_score = torch.sort(grouped, dim=-1, descending=True).values[..., :top2].sum(-1)   # [T, G]
            keep = _topk_stable(group_score, kg)                                                  # [T, kg]
            mask = torch.zeros(T, G, dtype=torch.bool).scatter_(1, keep, True)
            mask = mask.unsqueeze(-1).expand(T, G, E // G).reshape(T, E)
            biased = biased.masked_fill(~mask, float("-inf"))
        ids = _topk_stable(biased, k)
        weights = torch.gather(scores, 1, ids)
        if routing.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        weights = weights * routing.routed_scaling_factor
    else:
        raise ValueError(f"unknown routing kind {routing.kind!r}")
    return weights.to(torch.float32).contiguous(), ids.to(torch.int32).contiguous()
