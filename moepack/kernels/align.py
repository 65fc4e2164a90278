"""Routing sort on the GPU: group (token, slot) pairs by expert, each expert's run padded to BLOCK_M.

Pairs are numbered p = t * k + j. Outputs, all int32 with static shapes (CUDA-graph safe):
- sorted_ids [max_blocks * BLOCK_M]: pair ids grouped by expert; padding slots hold P (= T*k, a sentinel);
- expert_ids [max_blocks]: the local expert of each block, -1 past the last used block;
- num_blocks [1]: blocks in use.
max_blocks = P // BLOCK_M + min(E, P) bounds sum_e ceil(count_e / BLOCK_M). Ids < 0 (experts on other
ranks) are left out. Within an expert the order of pairs is whatever the atomics give; the result of
the MoE does not depend on it (every pair's output row is written by exactly one program).

Three launches after a memset of the E counters, each kernel short and free of [pairs x experts] work:
- `_count_kernel`: atomic histogram; each pair learns its rank within its expert. The counters sit one
  128-byte line apart (`COUNTER_STRIDE`) so the atomics spread over E lines of L2 instead of E / 32.
- `_layout_kernel`, one program per expert: the padded prefix sum of the E counts (cheap, recomputed by
  each), this expert's start slot (for the next launch), its blocks' expert id and its padding sentinels,
  and an equal share of the slots and blocks past the used range.
- `_place_kernel`: every pair to slot start[expert] + rank.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .pdl import wait_for_previous_grid

COUNTER_STRIDE = 32     # int32s between two experts' counters: one 128-byte L2 line each


def max_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    return num_pairs // block_m + min(num_experts, num_pairs)


@triton.jit
def _count_kernel(ids_ptr, counts_ptr, rank_ptr, P, BLOCK: tl.constexpr, STRIDE: tl.constexpr,
                  PDL: tl.constexpr):
    wait_for_previous_grid(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ids = tl.load(ids_ptr + offs, mask=offs < P, other=-1)
    ok = ids >= 0
    rank = tl.atomic_add(counts_ptr + tl.where(ok, ids, 0) * STRIDE, tl.where(ok, 1, 0), mask=ok,
                         sem="relaxed")
    tl.store(rank_ptr + offs, rank, mask=ok)


@triton.jit
def _fill(ptr, lo, hi, value, CH: tl.constexpr):
    """ptr[lo:hi] = value, CH entries per store."""
    jc = tl.arange(0, CH)
    for s0 in range(lo, hi, CH):
        tl.store(ptr + s0 + jc, value + jc * 0, mask=s0 + jc < hi)


@triton.jit
def _share(lo_all, hi_all, parts, i):
    """[lo, hi) of share i when [lo_all, hi_all) is cut into `parts` equal shares (the last may be short)."""
    size = (hi_all - lo_all + parts - 1) // parts
    lo = lo_all + i * size
    return lo, tl.minimum(lo + size, hi_all)


@triton.jit
def _layout_kernel(counts_ptr, starts_ptr, sorted_ptr, expert_ids_ptr, num_blocks_ptr,
                   P, E, n_slots, n_blocks_max,
                   BLOCK_M: tl.constexpr, E_POW2: tl.constexpr, STRIDE: tl.constexpr, CH: tl.constexpr,
                   PDL: tl.constexpr):
    wait_for_previous_grid(PDL)
    e = tl.program_id(0)
    ex = tl.arange(0, E_POW2)
    c = tl.load(counts_ptr + ex * STRIDE, mask=ex < E, other=0)
    padded = (c + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    total = tl.sum(padded, axis=0)
    mine = ex == e
    start = tl.sum(tl.where(mine, ends - padded, 0), axis=0)
    count = tl.sum(tl.where(mine, c, 0), axis=0)
    span = tl.sum(tl.where(mine, padded, 0), axis=0)
    tl.store(starts_ptr + e, start)
    if e == 0:
        tl.store(num_blocks_ptr, total // BLOCK_M)
    # this expert's padding slots (fewer than BLOCK_M) and its blocks
    j = tl.arange(0, BLOCK_M)
    tl.store(sorted_ptr + start + count + j, P + j * 0, mask=j < span - count)
    _fill(expert_ids_ptr, start // BLOCK_M, (start + span) // BLOCK_M, e, CH)
    # share e of what lies past the used range: slots [total, n_slots) and blocks [total / BLOCK_M, n_blocks_max)
    lo, hi = _share(total, n_slots, E, e)
    _fill(sorted_ptr, lo, hi, P, CH)
    lo, hi = _share(total // BLOCK_M, n_blocks_max, E, e)
    _fill(expert_ids_ptr, lo, hi, -1, CH)


@triton.jit
def _place_kernel(ids_ptr, rank_ptr, starts_ptr, sorted_ptr, P, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_previous_grid(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ids = tl.load(ids_ptr + offs, mask=offs < P, other=-1)
    ok = ids >= 0
    rank = tl.load(rank_ptr + offs, mask=ok, other=0)
    start = tl.load(starts_ptr + ids, mask=ok, other=0)
    tl.store(sorted_ptr + start + rank, offs, mask=ok)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, pdl: bool = False):
    """topk_ids [T, k] int32 local ids (-1 = skip) -> (sorted_ids, expert_ids, num_blocks), see module doc.
    pdl: launch as programmatic dependents (triton_moe.pdl_enabled)."""
    P = topk_ids.numel()
    E = num_experts
    dev = topk_ids.device
    nb = max_blocks(P, E, block_m)
    n_slots = nb * block_m
    ids = topk_ids.reshape(-1)
    counts = torch.zeros(E * COUNTER_STRIDE, dtype=torch.int32, device=dev)
    rank = torch.empty(P, dtype=torch.int32, device=dev)
    starts = torch.empty(E, dtype=torch.int32, device=dev)
    sorted_ids = torch.empty(n_slots, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(nb, dtype=torch.int32, device=dev)
    num_blocks = torch.empty(1, dtype=torch.int32, device=dev)
    BLOCK = 256
    _count_kernel[(triton.cdiv(P, BLOCK),)](ids, counts, rank, P, BLOCK=BLOCK, STRIDE=COUNTER_STRIDE, PDL=pdl,
                                             launch_pdl=pdl)
    _layout_kernel[(E,)](counts, starts, sorted_ids, expert_ids, num_blocks, P, E, n_slots, nb,
                         BLOCK_M=block_m, E_POW2=triton.next_power_of_2(E), STRIDE=COUNTER_STRIDE, CH=128,
                         PDL=pdl, launch_pdl=pdl)
    _place_kernel[(triton.cdiv(P, BLOCK),)](ids, rank, starts, sorted_ids, P, BLOCK=BLOCK, PDL=pdl,
                                             launch_pdl=pdl)
    return sorted_ids, expert_ids, num_blocks
