"""Routing sort on the GPU: group (token, slot) pairs by expert, each expert's run padded to BLOCK_M.

Pairs are numbered p = t * k + j. Outputs, all int32 with static shapes (CUDA-graph safe):
- sorted_ids [max_blocks * BLOCK_M]: pair ids grouped by expert; padding slots hold P (= T*k, a sentinel);
- expert_ids [max_blocks]: the local expert of each block, -1 past the last used block;
- num_blocks [1]: blocks in use.
max_blocks = P // BLOCK_M + min(E, P) bounds sum_e ceil(count_e / BLOCK_M). Ids < 0 (experts on other
ranks) are left out. Within an expert the order of pairs is whatever the atomics give; the result of
the MoE does not depend on it (every pair's output row is written by exactly one program).

Two launches after a memset: `_count_kernel` (atomic histogram; each pair learns its rank within its
expert) and `_place_kernel` (every program recomputes the padded prefix sum of the E counts, which is
cheap, and writes its share of sorted_ids, sentinels and expert_ids).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import wait_for_previous_grid


def max_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    return num_pairs // block_m + min(num_experts, num_pairs)


@triton.jit
def _count_kernel(ids_ptr, counts_ptr, rank_ptr, P, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous_grid(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ids = tl.load(ids_ptr + offs, mask=offs < P, other=-1)
    ok = ids >= 0
    rank = tl.atomic_add(counts_ptr + tl.where(ok, ids, 0), tl.where(ok, 1, 0), mask=ok)
    tl.store(rank_ptr + offs, rank, mask=ok)


@triton.jit
def _padded_layout(counts_ptr, E, BLOCK_M: tl.constexpr, E_POW2: tl.constexpr):
    e = tl.arange(0, E_POW2)
    c = tl.load(counts_ptr + e, mask=e < E, other=0)
    padded = (c + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    return e, c, padded, ends


@triton.jit
def _place_kernel(ids_ptr, counts_ptr, rank_ptr, sorted_ptr, expert_ids_ptr, num_blocks_ptr,
                  P, E, n_slots, n_blocks_max,
                  BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous_grid(PDL)
    pid = tl.program_id(0)
    e, c, padded, ends = _padded_layout(counts_ptr, E, BLOCK_M, E_POW2)
    total = tl.sum(padded, axis=0)
    if pid == 0:
        tl.store(num_blocks_ptr, total // BLOCK_M)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    # 1) every pair to its slot
    ids = tl.load(ids_ptr + offs, mask=offs < P, other=-1)
    ok = ids >= 0
    rank = tl.load(rank_ptr + offs, mask=ok, other=0)
    start = tl.sum(tl.where(e[None, :] < ids[:, None], padded[None, :], 0), axis=1)
    tl.store(sorted_ptr + start + rank, offs, mask=ok)
    # 2) sentinels in padding slots (and in every slot past the used range)
    slot_expert = tl.sum(tl.where(ends[None, :] <= offs[:, None], 1, 0), axis=1)      # expert owning slot
    s_start = tl.sum(tl.where(e[None, :] < slot_expert[:, None], padded[None, :], 0), axis=1)
    s_count = tl.sum(tl.where(e[None, :] == slot_expert[:, None], c[None, :], 0), axis=1)
    is_pad = (offs - s_start >= s_count) | (offs >= total)
    tl.store(sorted_ptr + offs, tl.where(is_pad, P, 0), mask=is_pad & (offs < n_slots))
    # 3) expert of each block
    b_first = offs * BLOCK_M
    b_expert = tl.sum(tl.where(ends[None, :] <= b_first[:, None], 1, 0), axis=1)
    tl.store(expert_ids_ptr + offs, tl.where(b_first < total, b_expert, -1), mask=offs < n_blocks_max)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, pdl: bool = False):
    """topk_ids [T, k] int32 local ids (-1 = skip) -> (sorted_ids, expert_ids, num_blocks), see module doc.
    pdl: launch as programmatic dependents (triton_moe.pdl_enabled)."""
    P = topk_ids.numel()
    dev = topk_ids.device
    nb = max_blocks(P, num_experts, block_m)
    n_slots = nb * block_m
    ids = topk_ids.reshape(-1)
    counts = torch.zeros(num_experts, dtype=torch.int32, device=dev)
    rank = torch.empty(P, dtype=torch.int32, device=dev)
    sorted_ids = torch.empty(n_slots, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(nb, dtype=torch.int32, device=dev)
    num_blocks = torch.empty(1, dtype=torch.int32, device=dev)
    BLOCK = 128
    _count_kernel[(triton.cdiv(P, BLOCK),)](ids, counts, rank, P, BLOCK=BLOCK, PDL=pdl, launch_pdl=pdl)
    grid = (triton.cdiv(max(P, n_slots, nb), BLOCK),)
    _place_kernel[grid](ids, counts, rank, sorted_ids, expert_ids, num_blocks, P, num_experts, n_slots, nb,
                        BLOCK=BLOCK, BLOCK_M=block_m, E_POW2=triton.next_power_of_2(num_experts), PDL=pdl,
                        launch_pdl=pdl)
    return sorted_ids, expert_ids, num_blocks
