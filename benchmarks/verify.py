"""Benchmark `moepack verify OUT --level full` against reading OUT's files once (not a test).

    python benchmarks/verify.py [--out /var/tmp/moepack-bench/converted] [--source SRC] [--json result.json]

If OUT has no manifest, it is converted first from the gpt-oss-20b-shaped example (`benchmarks/convert.py`
writes it; aiter / mi355x / tp 4). Then, in this order: `cat OUT/* > /dev/null` (timed: reading the files
once, from whatever page cache state there is; caches cannot be dropped here), `verify OUT --level full`
in a child process (timed), and with --source also `verify OUT --level full --source SRC` (timed; it adds
hashing the source files and rebuilding every source tensor from the inverted chains).
Prints one JSON row: read-once time, verify times, ratios, machine and date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = Path("/var/tmp/moepack-bench")


def _timed(cmd: list[str], shell: bool = False) -> float:
    t = time.perf_counter()
    subprocess.run(cmd if not shell else " ".join(cmd), shell=shell, check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _verify_cmd(out: Path, source: Path | None) -> list[str]:
    code = ("import sys; from moepack.verify import verify; "
            "r = verify(sys.argv[1], source=sys.argv[2] or None, level='full', progress=False); "
            "print(len(r.rows)); sys.exit(r.exit_code)")
    return [sys.executable, "-c", code, str(out), str(source or "")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(WORK / "converted"))
    ap.add_argument("--source", default=None, help="also time verify with --source SRC")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    src = WORK / "gpt-oss-gpt-oss-20b"
    if not (out / "manifest.json").exists():
        if not (src / "config.json").exists():
            raise SystemExit(f"no source at {src}: run benchmarks/convert.py first")
        sys.path.insert(0, str(REPO))
        from moepack.convert.run import convert
        convert(str(src), str(out), "aiter", "mi355x", tp=4, overwrite=True, progress=False)
    files = sorted(p for p in out.iterdir() if p.is_file())
    nbytes = sum(p.stat().st_size for p in files)
    read = _timed(["cat", *[str(p) for p in files], ">", "/dev/null"], shell=True)
    full = _timed(_verify_cmd(out, None))
    row = {"date": datetime.date.today().isoformat(),
           "machine": f"{platform.node()} {os.cpu_count()} cores "
                      f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
           "out": str(out), "out_bytes": nbytes, "read_once_s": round(read, 2),
           "verify_full_s": round(full, 2), "ratio": round(full / read, 3)}
    if args.source:
        src_bytes = sum(p.stat().st_size for p in Path(args.source).iterdir() if p.is_file())
        full_src = _timed(_verify_cmd(out, Path(args.source)))
        row.update(source_bytes=src_bytes, verify_full_source_s=round(full_src, 2),
                   ratio_source=round(full_src / read, 3))
    print(json.dumps(row, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
