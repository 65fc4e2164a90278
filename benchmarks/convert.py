"""Benchmark `moepack convert` against `cp -r` of the same checkpoint, in one run (not a test).

    python benchmarks/convert.py [--size gpt-oss-20b] [--backend aiter --hardware mi355x --tp 4]
                                 [--workers 1] [--work /var/tmp/moepack-bench] [--json result.json]

Writes the gpt-oss example of the given size (default the gpt-oss-20b shape, ~13 GB) under --work if it
is not there, then, in this order:
  1. read the whole source once (`cat > /dev/null`) so both contestants start from the same page cache;
  2. `cp -r SRC COPY && sync` (timed; the copy is removed afterwards);
  3. `moepack convert` in a child process (timed; peak RSS from os.wait4 = the largest process of the tree,
     plus the summed RSS of the whole tree sampled every 0.1 s from /proc, which counts --workers children);
  4. `cp -r SRC COPY && sync` again.
The baseline is the mean of the two cp runs, so a page cache that favours either the first or the last
contestant is shared out evenly. Both sides include `sync`: convert fsyncs every file it writes, and a cp
without sync would only be timed into the page cache. Caches cannot be dropped here (no root on the CI box).
Prints one JSON row: wall times, ratio convert / cp, peak RSS, bytes, machine and date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _tree_rss(root_pid: int) -> int:
    """Summed RSS in bytes of root_pid and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root_pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def _timed_cp(src: Path, dst: Path) -> float:
    if dst.exists():
        shutil.rmtree(dst)
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    subprocess.run(["sync"], check=True)
    dt = time.perf_counter() - t
    shutil.rmtree(dst)
    subprocess.run(["sync"], check=True)
    return dt


def _timed_convert(src: Path, out: Path, args) -> tuple[float, int, int, dict]:
    if out.exists():
        shutil.rmtree(out)
    code = ("import json, sys; from moepack.convert.run import convert; "
            "m = convert(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], tp=int(sys.argv[5]), "
            "workers=int(sys.argv[6]), progress=False); print(json.dumps(m['summary']))")
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(out), args.backend, args.hardware,
                             str(args.tp), str(args.workers)], stdout=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    peak_tree = 0
    stop = threading.Event()

    def sample():
        nonlocal peak_tree
        while not stop.is_set():
            peak_tree = max(peak_tree, _tree_rss(proc.pid))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t
    stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"convert failed with exit {proc.returncode}")
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    subprocess.run(["sync"], check=True)
    return dt, usage.ru_maxrss * 1024, peak_tree, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", default="gpt-oss")
    ap.add_argument("--size", default="gpt-oss-20b")
    ap.add_argument("--backend", default="aiter")
    ap.add_argument("--hardware", default="mi355x")
    ap.add_argument("--tp", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", default="/var/tmp/moepack-bench")
    ap.add_argument("--keep", action="store_true", help="keep the converted folder")
    ap.add_argument("--json", default=None, help="also write the result row here")
    args = ap.parse_args()

    from moepack.example import write_example

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"{args.example}-{args.size}"
    if not (src / "config.json").exists():
        t = time.perf_counter()
        write_example(args.example, src, size=args.size)
        print(f"wrote {src} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    src_bytes = sum(p.stat().st_size for p in src.iterdir())
    subprocess.run(f"cat {src}/* > /dev/null", shell=True, check=True)

    cp1 = _timed_cp(src, work / "cp-copy")
    conv, maxrss, tree_rss, summary = _timed_convert(src, work / "converted", args)
    cp2 = _timed_cp(src, work / "cp-copy")
    if not args.keep:
        shutil.rmtree(work / "converted")
    cp = (cp1 + cp2) / 2
    row = {
        "date": datetime.date.today().isoformat(), "machine": f"{platform.node()} {os.cpu_count()} cores "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "example": f"{args.example}/{args.size}", "target": f"{args.backend}/{args.hardware} tp{args.tp}",
        "workers": args.workers, "source_bytes": src_bytes, "out_bytes": summary["bytes"],
        "cp_s": [round(cp1, 2), round(cp2, 2)], "convert_s": round(conv, 2), "ratio": round(conv / cp, 3),
        "peak_rss_gib": round(maxrss / 2**30, 3), "peak_tree_rss_gib": round(tree_rss / 2**30, 3),
        "padding_fraction": round(summary["padding_fraction"], 4),
    }
    print(json.dumps(row, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
