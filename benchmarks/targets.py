"""Issue 9's targets, cell by cell, checked against a `benchmarks/kernels.py` result (no GPU needed).

    python benchmarks/targets.py benchmarks/kernels-h100-2026-11-24-s10.json

Each case has a roof target per M range (the issue's table) and, at every M, "faster than the peer".
Roof % are the benchmark's own columns: % read roof = weight bytes of the experts hit / moepack's whole
layer time over the HBM read roof; % matmul roof = the layer's GEMM FLOPs / time over the bf16 (MXFP4
w4a16) or FP8 (w8a8) matmul roof, all measured in the same run.
"""
from __future__ import annotations

import json
import sys

# case prefix -> [(M range, what, threshold)]: "read" / "matmul" = % of that roof at least the threshold,
# "peer" = moepack's time at most the peer's (threshold = 1.0, "never slower than the peer")
TARGETS = {
    "gpt-oss": [((1, 1), "read", 60), ((8, 256), "read", 88), ((4096, 16384), "matmul", 65)],
    "DeepSeek-V3 FP8 block TP8": [((1, 1), "read", 50), ((8, 256), "read", 88), ((4096, 16384), "matmul", 50)],
    "DeepSeek-V3 FP8 block TP1": [((1, 1), "read", 80), ((8, 256), "peer", 1.0), ((4096, 16384), "matmul", 55)],
}


def check(rows: list[dict]) -> list[dict]:
    """-> one dict per (case, M): roof target and whether it holds, and whether moepack beat the peer."""
    out = []
    for r in rows:
        spec = next((v for k, v in TARGETS.items() if r["case"].startswith(k)), [])
        roof = next(((what, thr) for (lo, hi), what, thr in spec if lo <= r["M"] <= hi), None)
        cell = dict(case=r["case"], M=r["M"], speedup=r["speedup"], faster=r["speedup"] > 1.0)
        if roof is not None and roof[0] != "peer":
            got = r["pct_read"] if roof[0] == "read" else r["pct_matmul"]
            cell.update(target=f">= {roof[1]}% of the {roof[0]} roof", measured=f"{got:.1f}%", met=got >= roof[1])
        else:
            never_slower = roof is not None
            cell.update(target="never slower than the peer" if never_slower else "faster than the peer",
                        measured=f"{r['speedup']:.2f}x",
                        met=r["speedup"] >= roof[1] if never_slower else r["speedup"] > 1.0)
        out.append(cell)
    return out


def markdown(cells: list[dict]) -> str:
    lines = ["| case | M | roof target | measured | met | speed-up vs peer (target > 1) |",
             "|---|---|---|---|---|---|"]
    for c in cells:
        slower = "" if c["faster"] else " **(not faster)**"
        lines.append(f"| {c['case'].split(' (')[0]} | {c['M']} | {c['target']} | {c['measured']} | "
                     f"{'yes' if c['met'] else '**no**'} | {c['speedup']:.2f}x{slower} |")
    met = sum(c["met"] and c["faster"] for c in cells)
    lines.append(f"\n{met} of {len(cells)} cells meet both their roof target and the speed-up target.")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python benchmarks/targets.py KERNELS_JSON")
    print(markdown(check(json.load(open(argv[0]))["rows"])))


if __name__ == "__main__":
    main()
