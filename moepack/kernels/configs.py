"""Tile configurations for the Triton fused MoE, chosen from a table (no tuning at load time).

`pick(quant, M, E, topk, H, Ip)` -> `MoEConfig`. Rows of `TABLE` are keyed by (quant, M bucket) and
were set for the benchmark shapes (gpt-oss-120b MXFP4; DeepSeek-V3 FP8 block at TP1 and TP8) on an
H100; any other shape gets the same rule with its own M bucket.

- per_pair: decode path. Each (token, slot) pair is its own block of BLOCK_M rows of which one is used;
  no routing sort at all (the weights of an expert picked twice are read twice, which only matters once
  pairs outnumber the experts).
- block_m: rows per program (the sort pads each expert's run to it); bn1/bn2: output columns per program
  of the first GEMM (stored w13 rows, gate and up interleaved) and the second; bk: K per step.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GemmConfig:
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class MoEConfig:
    per_pair: bool
    block_m: int
    gemm1: GemmConfig
    gemm2: GemmConfig
    group_m: int = 8
    prequant: bool = False     # fp8_block: quantize activations in one pass before each GEMM (large M)


def _bucket(M: int) -> int:
    for b in (1, 8, 64, 256, 1024, 4096):
        if M <= b:
            return b
    return 16384


G = GemmConfig
# (quant, M bucket) -> (per_pair, block_m, gemm1, gemm2)
TABLE: dict[tuple[str, int], tuple] = {
    ("mxfp4", 1): (True, 16, G(64, 128, 4, 3), G(32, 128, 4, 3)),
    ("mxfp4", 8): (False, 16, G(64, 128, 4, 3), G(32, 128, 4, 3)),
    ("mxfp4", 64): (False, 16, G(64, 128, 4, 3), G(64, 128, 4, 3)),
    ("mxfp4", 256): (False, 16, G(64, 128, 4, 3), G(64, 128, 4, 3)),
    ("mxfp4", 1024): (False, 32, G(128, 128, 4, 3), G(64, 128, 4, 3)),
    ("mxfp4", 4096): (False, 64, G(128, 128, 4, 3), G(128, 128, 4, 3)),
    ("mxfp4", 16384): (False, 128, G(128, 128, 8, 3), G(128, 128, 8, 3)),
    ("fp8_block", 1): (True, 16, G(64, 128, 4, 4), G(64, 128, 4, 4)),
    ("fp8_block", 8): (False, 16, G(64, 128, 4, 4), G(64, 128, 4, 4)),
    ("fp8_block", 64): (False, 16, G(64, 128, 4, 4), G(64, 128, 4, 4)),
    ("fp8_block", 256): (False, 16, G(64, 128, 4, 4), G(64, 128, 4, 4)),
    ("fp8_block", 1024): (False, 32, G(128, 128, 4, 4), G(128, 128, 4, 4)),
    ("fp8_block", 4096): (False, 64, G(128, 128, 4, 4), G(128, 128, 4, 4)),
    ("fp8_block", 16384): (False, 128, G(128, 128, 8, 4), G(128, 128, 8, 4)),
}


def pick(quant: str, M: int, E: int, topk: int, H: int, Ip: int) -> MoEConfig:
    key = ("mxfp4" if quant == "mxfp4" else "fp8_block", _bucket(M))
    per_pair, block_m, g1, g2 = TABLE[key]
    per_pair = per_pair and M * topk <= 16
    return MoEConfig(per_pair=per_pair, block_m=block_m, gemm1=g1, gemm2=g2, prequant=block_m >= 32)
