"""route() against brute-force per-token loops in float64 (an independent reading of the routing rules)."""
from __future__ import annotations

import math

import pytest
import torch

from moepack.formats.model import Routing
from moepack.runtime.routing import route


def _argsort_desc(values: list[float]) -> list[int]:
    # ties to the lower index
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def ref_route(logits: torch.Tensor, r: Routing, bias: torch.Tensor | None):
    """Per-token Python loops in float64. Returns (weights [T][k], ids [T][k])."""
    out_w, out_i = [], []
    E = logits.shape[1]
    for row in logits.double().tolist():
        if r.kind == "topk_softmax":
            ids = _argsort_desc(row)[: r.top_k]
            m = max(row[i] for i in ids)
            ex = [math.exp(row[i] - m) for i in ids]
            w = [e / sum(ex) for e in ex]
        elif r.kind == "softmax_topk":
            m = max(row)
            ex = [math.exp(v - m) for v in row]
            p = [e / sum(ex) for e in ex]
            ids = _argsort_desc(p)[: r.top_k]
            w = [p[i] for i in ids]
            if r.norm_topk_prob:
                w = [x / sum(w) for x in w]
        else:
            s = [1.0 / (1.0 + math.exp(-v)) for v in row]
            b = [0.0] * E if bias is None else bias.double().tolist()
            sel = [s[e] + b[e] for e in range(E)]
            per = E // r.n_group
            gscore = []
            for g in range(r.n_group):
                vals = sorted(sel[g * per:(g + 1) * per], reverse=True)
                gscore.append(sum(vals[:2]))
            groups = set(_argsort_desc(gscore)[: r.topk_group])
            allowed = [e for e in range(E) if e // per in groups]
            ids = sorted(allowed, key=lambda e: (-sel[e], e))[: r.top_k]
            w = [s[e] for e in ids]
            if r.norm_topk_prob:
                w = [x / sum(w) for x in w]
            w = [x * r.routed_scaling_factor for x in w]
        out_w.append(w)
        out_i.append(ids)
    return torch.tensor(out_w, dtype=torch.float64), torch.tensor(out_i, dtype=torch.int64)


def _distinct_logits(T: int, E: int, seed: int) -> torch.Tensor:
    """Logits whose values differ by >= 0.05 within a row, so float32 and float64 pick the same experts."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(E, dtype=torch.float32) * 0.05 - 0.025 * E
    return torch.stack([base[torch.randperm(E, generator=g)] for _ in range(T)]) + torch.randn(T, 1, generator=g)


CASES = [
    Routing("topk_softmax", top_k=4),
    Routing("softmax_topk", top_k=2, norm_topk_prob=False),
    Routing("softmax_topk", top_k=8, norm_topk_prob=True),
    Routing("sigmoid_noaux", top_k=8, n_group=8, topk_group=4, routed_scaling_factor=2.5),
    Routing("sigmoid_noaux", top_k=6, n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0),
    Routing("sigmoid_noaux", top_k=3, n_group=4, topk_group=2, norm_topk_prob=True),
]


@pytest.mark.parametrize("routing", CASES, ids=lambda r: f"{r.kind}-k{r.top_k}-g{r.n_group}")
@pytest.mark.parametrize("seed", [0, 1])
def test_route_matches_bruteforce(routing: Routing, seed: int):
    T, E = 7, 32
    logits = _distinct_logits(T, E, seed)
    bias = None
    if routing.kind == "sigmoid_noaux":
        g = torch.Generator().manual_seed(100 + seed)
        # spaced so biased scores stay distinct; large enough to change the selection
        bias = (torch.randperm(E, generator=g).float() * 0.013 - 0.2)
    w, ids = route(logits, routing, bias)
    rw, rids = ref_route(logits, routing, bias)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32
    assert w.shape == ids.shape == (T, routing.top_k)
    assert torch.equal(ids.long(), rids)
    torch.testing.assert_close(w.double(), rw, rtol=1e-5, atol=1e-6)


def test_sigmoid_noaux_bias_changes_selection_but_not_weights_source():
    """The correction bias picks experts; the weights come from the unbiased sigmoid scores."""
    T, E = 3, 16
    logits = _distinct_logits(T, E, 5)
    r = Routing("sigmoid_noaux", top_k=2, n_group=1, topk_group=1, norm_topk_prob=False)
    bias = torch.zeros(E)
    bias[0] = 10.0      # expert 0 always chosen first
    w, ids = route(logits, r, bias)
    assert (ids[:, 0] == 0).all()
    torch.testing.assert_close(w[:, 0], torch.sigmoid(logits[:, 0]))


def test_group_limit_excludes_experts_outside_kept_groups():
    E = 8
    logits = torch.full((1, E), -5.0)
    logits[0, 0] = 5.0           # group 0 has the single best expert...
    logits[0, 4:8] = 3.0         # ...but group 1's top-2 sum is higher
    logits[0, 4:8] += torch.tensor([0.0, 0.1, 0.2, 0.3])
    r = Routing("sigmoid_noaux", top_k=2, n_group=2, topk_group=1)
    _, ids = route(logits, r)
    assert sorted(ids[0].tolist()) == [6, 7]


def test_topk_softmax_refuses_separate_bias():
    with pytest.raises(ValueError):
        route(torch.zeros(2, 4), Routing("topk_softmax", top_k=2), torch.zeros(4))
