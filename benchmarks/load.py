"""Time-to-ready of one rank: `moepack.load` vs the same bytes through `safetensors.torch.load_file`, and
vs loading the SOURCE checkpoint and applying the layout transforms at start-up. Same process, same run.

    python benchmarks/load.py [--example gpt-oss] [--size small] [--backend triton --hardware h100]
                              [--tp 2] [--rank 0] [--device cpu|cuda] [--repeat 5] [--work DIR] [--json FILE]

- moepack.load: `load(OUT, rank, device)` (fast check) — manifest and header checks, memory-mapped
  tensors of this rank plus the shared tensors, copied to the device when it is a GPU; also with
  check="full" (every byte hashed) for reference;
- load_file: `safetensors.torch.load_file(f, device)` of exactly the files `load` reads;
- source+transforms: open the source, describe it, plan every MoE layer, assemble each canonical tensor,
  apply its chain and keep this rank's part, plus the shared tensors — what a server does without moepack.
Targets (issue 6): moepack.load <= 1.2x load_file, and >= 5x faster than source+transforms.
The page cache is warm for all (every variant runs once before timing, then they take turns); on CPU, load and
load_file both return memory-mapped tensors, so both times are of mapping, not of reading.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from safetensors.torch import load_file  # noqa: E402

from moepack.example import write_example  # noqa: E402
from moepack.runtime import load  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(variants: dict, device: torch.device, repeat: int) -> dict[str, float]:
    """Median seconds of each `variants[name]()`, after one untimed warm-up each. The variants take turns
    (round robin), so page cache, allocator and clock state favour none of them."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, fn in variants.items():
        fn()
        _sync(device)
    for _ in range(repeat):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            result = fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            del result
    return {name: statistics.median(t) for name, t in times.items()}


def rank_files(out: Path, rank: int) -> list[Path]:
    """The files `load(out, rank)` reads: the rank's parts and every shared part."""
    m = json.loads((out / "manifest.json").read_text())
    names = {r["file"] for e in m["experts"] for r in e["ranks"][rank:rank + 1]}
    names |= {e["file"] for e in m["shared"].values()}
    return sorted(out / n for n in names)


def load_with_safetensors(files: list[Path], device: torch.device) -> dict:
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f), device=str(device)))
    return tensors


def source_with_transforms(src: Path, backend: str, hardware: str, tp: int, ep: int, rank: int,
                           device: torch.device) -> dict:
    """Start-up without moepack: read the source, run every chain, keep this rank's parts."""
    from moepack.formats.assemble import read_canonical
    from moepack.formats.detect import describe
    from moepack.layouts.plan import plan_layer
    from moepack.layouts.targets import get_target
    from moepack.source.checkpoint import Checkpoint

    ckpt = Checkpoint.open(src)
    desc = describe(ckpt)
    target = get_target(backend, hardware, desc.quant)
    tensors = {}
    for spec in desc.moe_layers:
        plan = plan_layer(spec, target, tp, ep)
        for role, ct in spec.tensors.items():
            part = plan.chains[role].apply(read_canonical(ckpt, ct))[rank]
            tensors[f"model.layers.{spec.index}.mlp.experts.{role}"] = part.to(device)
    for name in desc.passthrough:
        tensors[name] = ckpt.get(name).to(device)
    return tensors


def convert_folder(src: Path, out: Path, backend: str, hardware: str, tp: int, ep: int) -> None:
    from moepack.convert.run import convert

    convert(src, out, backend=backend, hardware=hardware, tp=tp, ep=ep, workers=min(4, os.cpu_count() or 1),
            progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", default="gpt-oss")
    ap.add_argument("--size", default="small")
    ap.add_argument("--backend", default="triton")
    ap.add_argument("--hardware", default="h100")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--ep", type=int, default=1)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", default=None, help="folder for the example and its conversion (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write the result row here")
    args = ap.parse_args()

    device = torch.device(args.device)
    work = Path(args.work or tempfile.mkdtemp(prefix="moepack-load-bench-"))
    src, out = work / f"{args.example}-{args.size}", work / f"{args.example}-{args.size}-{args.backend}-tp{args.tp}"
    if not src.exists():
        write_example(args.example, src, size=args.size)
    if not (out / "manifest.json").exists():
        convert_folder(src, out, args.backend, args.hardware, args.tp, args.ep)
    files = rank_files(out, args.rank)
    nbytes = sum(f.stat().st_size for f in files)
    emulate = args.backend != "triton"

    t = _timed({
        "load": lambda: load(out, rank=args.rank, device=device, allow_emulation=emulate).tensors,
        "full": lambda: load(out, rank=args.rank, device=device, check="full", allow_emulation=emulate).tensors,
        "load_file": lambda: load_with_safetensors(files, device),
    }, device, args.repeat)
    t_load, t_full, t_st = t["load"], t["full"], t["load_file"]
    t_src = _timed({"src": lambda: source_with_transforms(src, args.backend, args.hardware, args.tp, args.ep,
                                                           args.rank, device)}, device, max(1, args.repeat // 2))["src"]
    row = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpus": os.cpu_count(), "torch": torch.__version__, "example": args.example, "size": args.size,
        "target": f"{args.backend}/{args.hardware}", "tp": args.tp, "ep": args.ep, "rank": args.rank,
        "rank_bytes": nbytes, "load_s": t_load, "load_full_s": t_full, "load_file_s": t_st, "source_transform_s": t_src,
        "load_vs_load_file": t_load / t_st, "source_vs_load": t_src / t_load,
        "target_met": t_load <= 1.2 * t_st and t_src >= 5 * t_load,
    }
    print(f"{args.example}/{args.size} {row['target']} tp={args.tp} rank {args.rank} on {device} "
          f"({nbytes / 2**20:.1f} MiB read by the rank)")
    print(f"  moepack.load (fast)     {t_load * 1e3:10.2f} ms   {t_load / t_st:5.2f}x load_file  (target <= 1.2x)")
    print(f"  moepack.load (full)     {t_full * 1e3:10.2f} ms   {nbytes / t_full / 1e9:5.2f} GB/s hashed")
    print(f"  load_file, same bytes   {t_st * 1e3:10.2f} ms")
    print(f"  source + transforms     {t_src * 1e3:10.2f} ms   {t_src / t_load:7.1f}x slower than load  (target >= 5x)")
    print(f"  targets met: {row['target_met']}")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
