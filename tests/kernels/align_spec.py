"""The routing sort's contract (moepack/kernels/align.py), checked from its outputs alone, and the id
patterns it is checked on. Shared by the interpreter runner and the GPU test."""
from __future__ import annotations

import torch

# name -> (T, k, E, block_m, how the ids are drawn)
ALIGN_CASES = {
    "tiny": (5, 2, 4, 4, "random"),
    "skips": (9, 3, 6, 4, "random_with_skips"),        # ids -1 (experts of other ranks) are left out
    "hot": (12, 2, 5, 8, "one_expert"),               # every pair on the last expert: many blocks of one
    "sparse": (3, 2, 64, 16, "random"),               # more experts than pairs
    "odd": (37, 4, 7, 8, "random"),                   # E not a power of two
    "single": (1, 1, 3, 16, "random"),
}


def make_ids(T: int, k: int, E: int, how: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if how == "one_expert":
        return torch.full((T, k), E - 1, dtype=torch.int32)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(torch.int32) if k <= E else \
        torch.randint(0, E, (T, k), generator=g, dtype=torch.int32)
    if how == "random_with_skips":
        ids[torch.rand(T, k, generator=g) < 0.3] = -1
    return ids


def check_align(ids: torch.Tensor, E: int, block_m: int, sorted_ids, expert_ids, num_blocks) -> None:
    """Raises AssertionError where the outputs break the contract of moepack/kernels/align.py."""
    flat = ids.reshape(-1).tolist()
    P = len(flat)
    sorted_ids, expert_ids, num_blocks = (t.tolist() if isinstance(t, torch.Tensor) else list(t)
                                          for t in (sorted_ids, expert_ids, num_blocks))
    nb = P // block_m + min(E, P)
    assert len(sorted_ids) == nb * block_m and len(expert_ids) == nb
    pairs = {e: [] for e in range(E)}
    for p, i in enumerate(flat):
        if i >= 0:
            pairs[i].append(p)
    b = 0
    for e in range(E):                                  # experts in id order, each run padded to block_m
        n_blocks = -(-len(pairs[e]) // block_m)
        run = sorted_ids[b * block_m:(b + n_blocks) * block_m]
        assert expert_ids[b:b + n_blocks] == [e] * n_blocks, (e, expert_ids[b:b + n_blocks])
        real = run[:len(pairs[e])]
        assert sorted(real) == pairs[e], (e, real, pairs[e])
        assert run[len(pairs[e]):] == [P] * (len(run) - len(pairs[e])), (e, run)
        b += n_blocks
    assert int(num_blocks[0]) == b
    assert expert_ids[b:] == [-1] * (nb - b)
    assert sorted_ids[b * block_m:] == [P] * (nb * block_m - b * block_m)
