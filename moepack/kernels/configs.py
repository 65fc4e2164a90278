"""Tile configurations for the Triton fused MoE, chosen from a table (no tuning at load time).

`pick(quant, M, E, topk, H, Ip)` -> `MoEConfig`. `TUNED` holds, per benchmark shape (quant, H, Ip), the
winner of `python benchmarks/kernels.py --sweep` at each M bucket, measured on an H100 (torch 2.11,
triton 3.6, 2026-11-23; see docs/KERNEL_NOTES.md, version 6: swap-AB tiles added; version 8: per pair at
M <= 8 and deeper pipelines for FP8 at M = 8..1024, benchmarks/kernels-sweep-h100-2026-11-23-fp8.json;
version 9: FP8 weight tiles through TMA descriptors, benchmarks/kernels-sweep-h100-2026-11-23-tma{,2}.json;
version 10: gemm1 tiles of 256 gated columns quantize gemm2's input in their epilogue,
benchmarks/kernels-sweep-h100-2026-11-23-qout.json; version 12: MXFP4 scale codes loaded one K-step ahead, gpt-oss
M <= 256 re-swept, benchmarks/kernels-sweep-h100-2026-11-24-prefetch.json; version 13: FP8 weight scales as two
scalars per tile, gemm2 with several output tiles per program for DeepSeek-V3 TP8,
benchmarks/kernels-sweep-h100-2026-11-24-resident.json; TP1 M >= 1024 re-swept,
benchmarks/kernels-sweep-h100-2026-11-24-tp1-scales.json; version 14: the FP8 K-step's accumulate as one
fused multiply-add, TP1 M >= 1024 re-swept and kept, benchmarks/kernels-sweep-h100-2026-11-24-s8-tp1.json;
version 15: TP1 gemm2 at M >= 1024 by the warp-specialised Gluon kernel (`ws`),
benchmarks/kernels-sweep-h100-2026-11-24-s9-tp1-ws.json; version 16: TP1 gemm1 at M >= 1024 by its Gluon
twin, benchmarks/kernels-sweep-h100-2026-11-24-s10-tp1-ws-up.json, and both persistent (one program per
multiprocessor) where that won, benchmarks/kernels-sweep-h100-2026-11-24-s10-tp1-persistent.json; TP8 gemm1
at M >= 1024 by the same kernel, benchmarks/kernels-sweep-h100-2026-11-24-s10-tp8-ws-up.json; version 18: TP8
M = 1 by the single-launch decode, benchmarks/decode-sweep-h100-2026-11-24-s12-tp8.json; version 19: gpt-oss M >= 1024
with tail tiles, benchmarks/tails-ab-h100-2026-11-24-s13.json).
Any other shape uses the table of the nearest benchmark shape of its format (MXFP4 -> gpt-oss-120b; FP8 -> DeepSeek-V3 TP8 for Ip <= 512,
else TP1) at its own M bucket; M between buckets uses the next larger bucket.

- per_pair: decode path (taken for M <= 8 where the table says so). Each (token, slot) pair is its own block
  of BLOCK_M rows of which one is used; no routing sort and no activation quantization pass (the weights of
  an expert picked twice are read twice, which only matters once pairs outnumber the experts). At M = 8
  (third-session sweep, benchmarks/kernels-sweep-h100-2026-11-23-m8.json) it wins for DeepSeek-V3 TP8
  (64 pairs over 256 experts: 134 vs 160 us), ties for gpt-oss (260 vs 262 us) and loses for TP1 (969 vs
  853 us), where the weights dominate and the sorted path's wider tiles win.
- block_m: rows per program (the sort pads each expert's run to it; 64 and up lets Triton use wgmma);
  bn/bk: output columns / K per step of each GEMM (gemm1 over stored w13 rows, gate and up interleaved;
  gemm2 over w2 rows). FP8 always steps K by 128 (one scale block).
- prequant (fp8_block): quantize activations in one pass before each GEMM instead of in every N-tile
  program; gemm2's input is quantized in gemm1's epilogue instead where gemm1's tiles cover whole
  128-column groups of the intermediate (block_n 256 gated, `triton_moe.fuses_quant`).
- swap_ab (per GEMM): the program computes the transposed tile, weights x tokens, so the weight tile is the
  MMA's left (64-row, register-capable on Hopper) operand and block_m tokens sit on the narrow side.
- tma (per GEMM, FP8): weight tiles are copied by the Hopper tensor-memory accelerator from a descriptor
  over w [E * N, K] instead of by per-thread async copies; taken only where block_n divides N (else the
  pointer loads, same bits).
- ws (fp8_block with prequant on the sorted path, block_m 64, block_n 256, stages <= 4): run by
  `gluon_fp8.moe_down_ws` (gemm2) or `gluon_fp8.moe_up_ws` (gemm1, silu-gated, quantizing gemm2's input in
  its epilogue) on compute capability 9.0 (a loader warpgroup and two consumer warpgroups, no CTA-wide
  barrier in the K loop); elsewhere `_moe_gemm` with the same tile, which gives the same bits. On an MXFP4
  GEMM (sorted path, block_m 128, swap-AB 128 x 64, tiled weights, N % 128 == 0): `gluon_mxfp4.moe_mxfp4_ws`,
  offered to the sweep but in no table entry (slower than the Triton tile, docs/KERNEL_NOTES.md v17).
- persistent (ws only): one program per multiprocessor, each walking every grid-th tile, so the next
  tile's loads run under this one's epilogue; else one program per tile. Same bits either way.
- fused (per-pair path, mxfp4 / fp8_block without prequant): both GEMMs in one persistent launch of this
  many programs per multiprocessor, work taken by ticket (`triton_decode`); split_k (per GEMM, with fused):
  K split into that many float32 partials. Shipped for DeepSeek-V3 TP8 at M = 1 (gemm1 in 4 splits: 256
  work units instead of 64 programs; 46 -> 33 us, benchmarks/decode-sweep-h100-2026-11-24-s12-tp8.json);
  it lost for gpt-oss and tied for TP1 (benchmarks/decode-sweep-h100-2026-11-24-s12.json).
- tail_div (per GEMM, sorted path, `_moe_gemm` only): each expert's run of pairs is padded to whole
  blocks, so its last block is on average half padding (at gpt-oss M = 4096, block_m 128, a third of all
  rows); a block whose pairs fit in block_m / d rows, d = 2, 4, .. <= tail_div, runs a [block_m / d,
  block_n] tile instead: a d-th of the MMA work, the same bits (`triton_moe.tail_tiles` says where the
  small tile keeps the MMA instruction; elsewhere whole tiles).
- n_tiles (gemm2, fp8_block with prequant on the sorted path, K = the rank's intermediate size <= 256): output
  tiles per program. Each program holds its block's quantized rows and walks n_tiles tiles of y, the weight
  tiles of the next streaming in during this one's MMA and epilogue (`triton_moe._moe_down_resident`);
  1 = one tile per program (`_moe_gemm`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GemmConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    swap_ab: bool = False      # accumulate [BN, BM] = W @ A.T (weights on the MMA's wide side)
    tma: bool = False          # FP8: weight tiles through a TMA tensor descriptor (N % block_n == 0)
    n_tiles: int = 1           # gemm2, fp8_block + prequant, K <= 256: output tiles per program (A held)
    ws: bool = False           # Hopper warp-specialised Gluon kernel where it runs (fp8_block + prequant; MXFP4)
    persistent: bool = False   # ws: one program per multiprocessor walking the tiles
    split_k: int = 1           # per-pair path with MoEConfig.fused: K split into this many float32 partials
    tail_div: int = 1          # sorted path: a last block with <= block_m / d pairs (d <= tail_div) runs a 1/d tile


@dataclass(frozen=True)
class MoEConfig:
    per_pair: bool
    block_m: int
    gemm1: GemmConfig
    gemm2: GemmConfig
    group_m: int = 8
    prequant: bool = False     # fp8_block: quantize activations in one pass before each GEMM
    fused: int = 0             # per-pair path: both GEMMs in one persistent launch, this many programs per SM


BUCKETS = (1, 8, 64, 256, 1024, 4096, 16384)


def _bucket(M: int) -> int:
    for b in BUCKETS:
        if M <= b:
            return b
    return BUCKETS[-1]


G = GemmConfig
# (quant, H, Ip) -> {M bucket: (per_pair, block_m, prequant, gemm1, gemm2[, fused])}; H100 sweep winners
TUNED: dict[tuple[str, int, int], dict[int, tuple]] = {
    ("mxfp4", 2880, 2880): {                      # gpt-oss-120b, E=128, top-4
        1: (True, 16, False, G(64, 256, 4, 3, True), G(64, 256, 4, 3, True)),
        8: (False, 16, False, G(64, 256, 4, 3, True), G(64, 128, 4, 3, True)),
        64: (False, 16, False, G(64, 256, 4, 3, True), G(64, 256, 4, 3, True)),
        256: (False, 16, False, G(64, 256, 4, 3, True), G(64, 256, 4, 3, True)),
        # M >= 1024: each expert's last block as a tile of half or a quarter of the rows where its pairs fit (v19)
        1024: (False, 64, False, G(128, 128, 4, 3, True, tail_div=2), G(128, 128, 4, 3, True, tail_div=2)),
        4096: (False, 128, False, G(128, 64, 8, 4, True, tail_div=4), G(128, 128, 4, 3, True, tail_div=2)),
        16384: (False, 128, False, G(128, 64, 8, 4, True, tail_div=4), G(128, 128, 4, 3, True, tail_div=2)),
    },
    ("fp8_block", 7168, 256): {                   # DeepSeek-V3 TP8 rank, E=256, top-8
        # M = 1: both GEMMs in one launch, 3 programs per multiprocessor, gemm1's K in 4 splits (version 18)
        1: (True, 16, False, G(64, 128, 4, 4, True, tma=True, split_k=4), G(128, 128, 4, 4, True), 3),
        8: (True, 16, False, G(64, 128, 4, 3, True, tma=True), G(64, 128, 4, 3, True, tma=True)),  # per pair
        64: (False, 16, True, G(128, 128, 4, 5, True, tma=True), G(128, 128, 4, 3, True, tma=True, n_tiles=4)),
        256: (False, 16, True, G(128, 128, 4, 3, True, tma=True), G(128, 128, 4, 3, True, tma=True, n_tiles=4)),
        1024: (False, 64, True, G(256, 128, 8, 4, tma=True, ws=True), G(128, 128, 4, 3, tma=True, n_tiles=56)),
        4096: (False, 64, True, G(256, 128, 8, 4, tma=True, ws=True, persistent=True),
               G(128, 128, 4, 4, tma=True, n_tiles=56)),
        16384: (False, 64, True, G(256, 128, 8, 5, tma=True, ws=True, persistent=True),
                G(64, 128, 4, 3, tma=True, n_tiles=56)),
    },
    ("fp8_block", 7168, 2048): {                  # DeepSeek-V3 TP1, E=256, top-8
        1: (True, 16, False, G(64, 128, 4, 4, True, tma=True), G(128, 128, 4, 4, True, tma=True)),
        8: (False, 16, True, G(128, 128, 4, 5, True, tma=True), G(128, 128, 4, 5, True, tma=True)),
        64: (False, 16, True, G(64, 128, 4, 5, True, tma=True), G(64, 128, 4, 5, True, tma=True)),
        256: (False, 16, True, G(64, 128, 4, 5, True, tma=True), G(128, 128, 4, 5, True)),
        1024: (False, 64, True, G(256, 128, 8, 4, tma=True, ws=True), G(256, 128, 8, 4, tma=True, ws=True)),
        4096: (False, 64, True, G(256, 128, 8, 4, tma=True, ws=True, persistent=True), G(128, 128, 4, 3, tma=True)),
        16384: (False, 64, True, G(256, 128, 8, 4, tma=True, ws=True, persistent=True),
                G(256, 128, 8, 4, tma=True, ws=True, persistent=True)),
    },
}


def _table(quant: str, H: int, Ip: int) -> dict[int, tuple]:
    fam = "mxfp4" if quant == "mxfp4" else "fp8_block"
    if (fam, H, Ip) in TUNED:
        return TUNED[(fam, H, Ip)]
    if fam == "mxfp4":
        return TUNED[("mxfp4", 2880, 2880)]
    return TUNED[("fp8_block", 7168, 256 if Ip <= 512 else 2048)]


def pick(quant: str, M: int, E: int, topk: int, H: int, Ip: int) -> MoEConfig:
    per_pair, block_m, prequant, g1, g2, *fused = _table(quant, H, Ip)[_bucket(M)]
    per_pair = per_pair and M <= 8
    return MoEConfig(per_pair=per_pair, block_m=block_m, gemm1=g1, gemm2=g2,
                     prequant=prequant and quant == "fp8_block", fused=fused[0] if fused and per_pair else 0)


def shipped_configs(quant: str) -> list[MoEConfig]:
    """The tuned configs of `quant`'s family that differ in what correctness can depend on (routing path,
    block_m, prequant, block_k, swap_ab and tma of each GEMM, gemm1 tiles of whole 256-column groups that
    quantize gemm2's input in their epilogue, gemm2 with several tiles per program, the Gluon kernels and
    their persistent launch, the single-launch decode and its K splits, tail tiles): one
    representative each, for tests that run them all."""
    fam = "mxfp4" if quant == "mxfp4" else "fp8_block"
    seen: dict[tuple, MoEConfig] = {}
    for (q, _, _), table in TUNED.items():
        if q != fam:
            continue
        for per_pair, block_m, prequant, g1, g2, *fused in table.values():
            f = fused[0] if fused else 0
            key = (per_pair, block_m, prequant, g1.block_k, g2.block_k, g1.swap_ab, g2.swap_ab, g1.tma, g2.tma,
                   g1.block_n % 256 == 0, g2.n_tiles > 1, g1.ws, g2.ws, g1.persistent, g2.persistent, f > 0,
                   g1.split_k, g2.split_k, g1.tail_div, g2.tail_div)
            seen.setdefault(key, MoEConfig(per_pair=per_pair, block_m=block_m, gemm1=g1, gemm2=g2, prequant=prequant,
                                           fused=f))
    return list(seen.values())
