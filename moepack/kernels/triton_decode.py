"""Single-launch decode: both GEMMs of the per-pair path in one persistent kernel, `moe_decode`.

At M <= 8 the layer streams each picked expert's weights once. Two launches (gemm1, then gemm2) each pay
a launch gap, a ramp and a tail, and some GEMMs have too few tiles for the GPU: DeepSeek-V3 TP8 gemm1 at
M = 1 is 8 pairs x 8 tiles of 64 rows = 64 programs for 132 multiprocessors. `_moe_decode` is one launch
of `programs` programs that take work units by ticket (one atomic counter), gemm1's units first:

1. gemm1 unit (pair, n-tile, k-split): one split of K for one [BN1]-row tile of w13 and one (token, slot)
   pair. With S1 > 1 splits it writes a float32 partial to `part` [S1, P, N1]; the unit that completes
   the tile (a per-tile counter) sums the tile's partials in split order, so the bits do not depend on
   which split finishes last, then adds the bias, applies the activation, stores the pair's slice of the
   intermediate [P, Ip] (activation dtype) and counts the tile done for its pair.
2. gemm2 unit (pair, n-tile, k-split): waits until every gemm1 tile of its pair is done (spins on the
   pair's counter, then an acquiring atomic), runs one split of K = Ip for one [BN2]-row tile of w2, and
   writes (partial + bias on split 0) * routed weight, float32, to `y_parts` [S2, P, H].

`triton_moe._combine` then sums y_parts over the S2 splits and the k slots. Tickets are taken in order
and gemm1 units never wait, so a waiting gemm2 unit waits only on units that running programs hold: no
deadlock, however many programs are resident. The last program to finish (an exit counter) zeroes the
ticket, exit and per-pair counters for the next launch; each tile counter is zeroed by the unit that
completes its tile. The counters live in one int32 buffer per (device, stream) (`_sync_buffer`), so
launches on one stream, the only ones that can share it, run one after another.

The K loop of every unit is `triton_moe.k_loop`, the loop of `_moe_gemm`; the epilogues are its per-pair
epilogues, except that gemm2's output stays float32 until the combine.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..layouts.triton import mxfp4_k_chunk
from .triton_moe import (_INTERPRETED, ACT, FMT, _act_scalars, _weight_args, activate_tile, fp4_tiled, k_loop,
                         pair_rows, weight_descriptor)

SYNC_FIXED = 2          # ticket, exit counter; then one done-counter per pair, then one split counter per tile
_SYNC: dict[tuple, torch.Tensor] = {}


def _sync_buffer(device: torch.device, n: int) -> torch.Tensor:
    """A zeroed int32 [>= n] counter buffer for this device and its current stream (kept zero by the kernel)."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    buf = _SYNC.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _SYNC[key] = buf
    return buf


@triton.jit
def _unit(u, N, BN: tl.constexpr, S: tl.constexpr, TOPK_IDS):
    """Work unit u of a GEMM with N output rows in BN-row tiles and K in S splits, numbered pair-major ->
    (pair, tile, split, the pair's local expert or -1)."""
    n_t = tl.cdiv(N, BN)
    pair = u // (n_t * S)
    return pair, (u // S) % n_t, u % S, tl.load(TOPK_IDS + pair)


@triton.jit
def _k_split(s, K, BK: tl.constexpr, S: tl.constexpr):
    """Split s of S of K in whole K-steps of BK -> (k_lo, k_hi); the last splits may be short or empty."""
    per = tl.cdiv(tl.cdiv(K, BK), S) * BK
    return s * per, tl.minimum(s * per + per, K)


@triton.jit
def _gemm1_unit(u, X, stride_xm, INTER, stride_im, PART, SYNC, TOPK_IDS,
                W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2, BIAS, stride_be,
                P, H, N, n_sb, alpha, limit,
                TOPK: tl.constexpr, FMT: tl.constexpr, ACT_KIND: tl.constexpr, GATED: tl.constexpr,
                HAS_BIAS: tl.constexpr, HAS_LIMIT: tl.constexpr, CH: tl.constexpr, BM: tl.constexpr,
                BN: tl.constexpr, BK: tl.constexpr, S: tl.constexpr, SOFT_RNE: tl.constexpr,
                BF16_ASM: tl.constexpr, SWAP: tl.constexpr, FOLD: tl.constexpr, TMA: tl.constexpr,
                TILED: tl.constexpr):
    pair, j, s, e = _unit(u, N, BN, S, TOPK_IDS)
    if e >= 0:
        n_t = tl.cdiv(N, BN)
        rows, mask_m = pair_rows(pair, BM)
        k_lo, k_hi = _k_split(s, H, BK, S)
        acc = k_loop(X, stride_xm, X, 0, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2,
                     X, 0, e.to(tl.int64), j, rows // TOPK, mask_m, N, H, k_lo, k_hi, n_sb,
                     FMT, GATED, BM, BN, BK, CH, SOFT_RNE, BF16_ASM, False, SWAP, FOLD, TMA, TILED)
        if SWAP:
            acc = tl.trans(acc)
        offs_n = j * BN + tl.arange(0, BN)
        mask_n = offs_n < N
        last = True
        if S > 1:
            part = PART + pair.to(tl.int64) * N + offs_n[None, :] + 0 * rows[:, None]
            tl.store(part + s * P * N, acc, mask=mask_m[:, None] & mask_n[None, :])
            tl.debug_barrier()
            cnt = SYNC + 2 + P + pair * n_t + j
            last = tl.atomic_add(cnt, 1) == S - 1
            if last:
                acc = tl.zeros([BM, BN], dtype=tl.float32)
                for q in range(S):
                    acc += tl.load(part + q * P * N, mask=mask_n[None, :], other=0.0, cache_modifier=".cg")
                tl.store(cnt, 0)
        if last:
            if HAS_BIAS:
                acc += tl.load(BIAS + e.to(tl.int64) * stride_be + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            h, offs_o, mask_o = activate_tile(acc, j, offs_n, mask_n, N, ACT_KIND, GATED, alpha, limit, HAS_LIMIT,
                                              BM, BN)
            o_ptrs = INTER + rows.to(tl.int64)[:, None] * stride_im + offs_o[None, :]
            tl.store(o_ptrs, h.to(INTER.dtype.element_ty), mask=mask_m[:, None] & mask_o[None, :])
            tl.debug_barrier()
            tl.atomic_add(SYNC + 2 + pair, 1)       # release: the pair's slice is visible before the count


@triton.jit
def _gemm2_unit(u, INTER, stride_im, YP, SYNC, TOPK_IDS, TOPK_W,
                W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1, stride_s2, BIAS, stride_be,
                P, N, K, n_sb, n_t1,
                FMT: tl.constexpr, HAS_BIAS: tl.constexpr, CH: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                BK: tl.constexpr, S: tl.constexpr, SOFT_RNE: tl.constexpr, BF16_ASM: tl.constexpr,
                SWAP: tl.constexpr, FOLD: tl.constexpr, TMA: tl.constexpr, TILED: tl.constexpr):
    pair, j, s, e = _unit(u, N, BN, S, TOPK_IDS)
    if e >= 0:
        done = tl.load(SYNC + 2 + pair, volatile=True)
        while done < n_t1:
            done = tl.load(SYNC + 2 + pair, volatile=True)
        tl.atomic_add(SYNC + 2 + pair, 0)           # acquire: the pair's intermediate is visible from here
        tl.debug_barrier()
        rows, mask_m = pair_rows(pair, BM)
        k_lo, k_hi = _k_split(s, K, BK, S)
        acc = k_loop(INTER, stride_im, INTER, 0, W, W_DESC, stride_we, stride_wn, WS, stride_se, stride_s1,
                     stride_s2, INTER, 0, e.to(tl.int64), j, rows, mask_m, N, K, k_lo, k_hi, n_sb,
                     FMT, False, BM, BN, BK, CH, SOFT_RNE, BF16_ASM, False, SWAP, FOLD, TMA, TILED)
        if SWAP:
            acc = tl.trans(acc)
        offs_n = j * BN + tl.arange(0, BN)
        mask_n = offs_n < N
        if HAS_BIAS:
            b = tl.load(BIAS + e.to(tl.int64) * stride_be + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            acc += tl.where(s == 0, b, 0.0)[None, :]
        acc = acc * tl.load(TOPK_W + pair)
        y = YP + (s * P + pair).to(tl.int64) * N + offs_n[None, :] + 0 * rows[:, None]
        tl.store(y, acc, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _moe_decode(
    X, stride_xm, INTER, stride_im, PART, YP, SYNC, TOPK_IDS, TOPK_W,
    W1, D1, sw1e, sw1n, WS1, ss1e, ss11, ss12, B1, sb1e,
    W2, D2, sw2e, sw2n, WS2, ss2e, ss21, ss22, B2, sb2e,
    P, H, Ip, N1, n_sb, alpha, limit, n_prog,
    TOPK: tl.constexpr, FMT: tl.constexpr, ACT_KIND: tl.constexpr, GATED: tl.constexpr,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, HAS_LIMIT: tl.constexpr, CH1: tl.constexpr, CH2: tl.constexpr,
    BM: tl.constexpr, BN1: tl.constexpr, BK1: tl.constexpr, S1: tl.constexpr, BN2: tl.constexpr,
    BK2: tl.constexpr, S2: tl.constexpr, SOFT_RNE: tl.constexpr, BF16_ASM: tl.constexpr,
    SWAP1: tl.constexpr, SWAP2: tl.constexpr, FOLD: tl.constexpr, TMA1: tl.constexpr, TMA2: tl.constexpr,
    TILED1: tl.constexpr, TILED2: tl.constexpr,
):
    """Both GEMMs of the per-pair path for P = T * TOPK pairs (module docstring).

    X [T, H] activations; TOPK_IDS [P] int32 local expert per pair (-1: not on this rank), TOPK_W [P]
    float32; W1 w13 [E, N1, .] (N1 = 2 Ip gated, else Ip), W2 w2 [E, H, .], scales and biases as stored
    (`_moe_gemm`'s arguments); INTER [P, Ip] activation dtype; PART float32 [S1, P, N1] (S1 > 1);
    YP float32 [S2, P, H]; SYNC int32 counters, zero on entry and on exit."""
    n_t1 = tl.cdiv(N1, BN1)
    total1 = P * n_t1 * S1
    total = total1 + P * tl.cdiv(H, BN2) * S2
    t = tl.atomic_add(SYNC, 1)
    while t < total:
        if t < total1:
            _gemm1_unit(t, X, stride_xm, INTER, stride_im, PART, SYNC, TOPK_IDS,
                        W1, D1, sw1e, sw1n, WS1, ss1e, ss11, ss12, B1, sb1e, P, H, N1, n_sb, alpha, limit,
                        TOPK, FMT, ACT_KIND, GATED, HAS_B1, HAS_LIMIT, CH1, BM, BN1, BK1, S1, SOFT_RNE,
                        BF16_ASM, SWAP1, FOLD, TMA1, TILED1)
        else:
            _gemm2_unit(t - total1, INTER, stride_im, YP, SYNC, TOPK_IDS, TOPK_W,
                        W2, D2, sw2e, sw2n, WS2, ss2e, ss21, ss22, B2, sb2e, P, H, Ip, n_sb, n_t1,
                        FMT, HAS_B2, CH2, BM, BN2, BK2, S2, SOFT_RNE, BF16_ASM, SWAP2, FOLD, TMA2, TILED2)
        t = tl.atomic_add(SYNC, 1)
    if tl.atomic_add(SYNC + 1, 1) == n_prog - 1:    # every other program has left: reset for the next launch
        for c0 in range(0, 2 + P, 128):
            offs = c0 + tl.arange(0, 128)
            tl.store(SYNC + offs, 0, mask=offs < 2 + P)


def moe_decode(x, ids, tw, stored, meta, cfg, topk):
    """Both GEMMs of the per-pair path in one launch: x [T, H], ids [P] int32, tw [P] float32 (flattened
    pairs) -> y_parts float32 [S2, P, H], to be summed over splits and slots by `_combine`."""
    H = x.shape[1]
    P, Ip = ids.numel(), meta.Ip
    N1 = 2 * Ip if meta.gated else Ip
    g1, g2 = cfg.gemm1, cfg.gemm2
    fmt = FMT[meta.quant]
    bk1, bk2 = (128, 128) if fmt == 1 else (g1.block_k, g2.block_k)
    inter = torch.empty(P, Ip, dtype=x.dtype, device=x.device)
    y_parts = torch.empty(g2.split_k, P, H, dtype=torch.float32, device=x.device)
    # gemm1's split partials (unread with K unsplit: y_parts stands in)
    part = torch.empty(g1.split_k, P, N1, dtype=torch.float32, device=x.device) if g1.split_k > 1 else y_parts
    units = P * (triton.cdiv(N1, g1.block_n) * g1.split_k + triton.cdiv(H, g2.block_n) * g2.split_k)
    sync = _sync_buffer(x.device, SYNC_FIXED + P + P * triton.cdiv(N1, g1.block_n))
    if x.device.type == "cuda":
        n_sm = torch.cuda.get_device_properties(x.device).multi_processor_count
    else:
        n_sm = 2
    n_prog = min(units, n_sm * cfg.fused)
    W1, W2, WS1, WS2 = stored["w13_weight"], stored["w2_weight"], stored["w13_weight_scale"], stored["w2_weight_scale"]
    D1 = weight_descriptor(W1, N1, H, g1.block_n, bk1) if g1.tma and fmt == 1 else None
    D2 = weight_descriptor(W2, H, Ip, g2.block_n, bk2) if g2.tma and fmt == 1 else None
    b1, b2 = stored.get("w13_bias"), (stored.get("w2_bias") if meta.add_w2_bias else None)
    act = meta.activation
    _moe_decode[(n_prog,)](
        x, x.stride(0), inter, inter.stride(0), part, y_parts, sync, ids, tw,
        *_weight_args(W1, D1, WS1, b1, x), *_weight_args(W2, D2, WS2, b2, x),
        P, H, Ip, N1, -(-Ip // 128), *_act_scalars(act), n_prog,
        TOPK=topk, FMT=fmt, ACT_KIND=ACT[act.kind], GATED=meta.gated, HAS_B1=b1 is not None,
        HAS_B2=b2 is not None, HAS_LIMIT=act.limit is not None,
        CH1=mxfp4_k_chunk(H) if fmt == 0 else 0, CH2=mxfp4_k_chunk(Ip) if fmt == 0 else 0,
        BM=cfg.block_m, BN1=g1.block_n, BK1=bk1, S1=g1.split_k, BN2=g2.block_n, BK2=bk2, S2=g2.split_k,
        SOFT_RNE=_INTERPRETED, BF16_ASM=x.dtype == torch.bfloat16 and not _INTERPRETED,
        SWAP1=g1.swap_ab, SWAP2=g2.swap_ab, FOLD=meta.small_scales and fmt == 0,
        TMA1=D1 is not None, TMA2=D2 is not None,
        TILED1=fp4_tiled(meta, 1, N1, H), TILED2=fp4_tiled(meta, 2, H, Ip),
        num_warps=g1.num_warps, num_stages=g1.num_stages,
    )
    return y_parts
