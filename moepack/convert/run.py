"""`moepack convert`: stream a checkpoint into per-rank kernel-layout shards, then write manifest.json last.

    convert(src, out, backend, hardware, tp=1, ep=1, ...) -> dict   (the manifest, plus "summary")

Order of work: open + describe + plan (no tensor data read) -> refuse a non-empty OUT unless --resume /
--overwrite -> take OUT's lock -> remove manifest.json (the folder is incomplete from here on) -> run the
units (one canonical tensor of one layer in memory at a time per worker; each finished unit is recorded in a
small journal file `.moepack-done-{unit}.json`) while a thread hashes the source files from the bytes
the units read (convert/provenance.py) -> copy config and
tokenizer files -> write manifest.json -> drop the journal. Killed at any point, OUT has no manifest;
`--resume` keeps the units whose journal fingerprint matches the new plan and whose files still hash to the
recorded hashes, and redoes the rest. Output bytes are deterministic (no timestamps in the parts).

Test hook: the environment variable MOEPACK_KILL_AT="tensor:N" | "part:N" | "manifest" makes the process
SIGKILL itself at the N-th tensor written / part finished, or just before writing the manifest.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import queue
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

from .. import __version__
from ..errors import BadInputError, EnvironmentError_, FormatError, SourceError
from ..formats.detect import describe
from ..hashing import TENSOR_HASH
from ..layouts.targets import get_target
from ..numerics import E8M0_NAN
from ..source.checkpoint import Checkpoint
from .fastpath import BufferPool, apply_chain, prefetch_canonical, pread_into, read_canonical_pread
from .manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest
from .provenance import SourceHasher
from .plan import LAYOUT_VERSION, ConvertPlan, Unit, build_plan
from .writer import (LOCK_NAME, TEMP_SUFFIX, OutputLock, PartWriter, check_out_dir,
                     environment_error, file_digest, parse_size, remove_temp_files, write_file_atomic)

JOURNAL_PREFIX = ".moepack-done-"
_READ_CHUNK = 16 << 20
_kill_counts: dict[str, int] = {}


def _maybe_kill(event: str) -> None:
    """Test hook (see module docstring): SIGKILL this process at a chosen event."""
    spec = os.environ.get("MOEPACK_KILL_AT")
    if not spec:
        return
    kind, _, n = spec.partition(":")
    if kind != event:
        return
    _kill_counts[event] = _kill_counts.get(event, 0) + 1
    if not n or _kill_counts[event] == int(n):
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- units

def _journal(out: Path, unit: Unit) -> Path:
    return out / f"{JOURNAL_PREFIX}{unit.index}.json"


def _read_source_chunks(root: Path, file: str, name: str, start: int, nbytes: int, pool: BufferPool,
                        on_read=None):
    """Yield the bytes [start, start + nbytes) of tensor `name` in a source file as [<= _READ_CHUNK] uint8
    tensors read into pooled, page-aligned buffers (a buffer is reused once nothing holds it);
    `on_read(file, offset, view)` sees each chunk (source hashing)."""
    fd = os.open(root / file, os.O_RDONLY)
    try:
        pos, end = start, start + nbytes
        while pos < end:
            n = min(_READ_CHUNK, end - pos)
            chunk = pool.take((_READ_CHUNK,), torch.uint8)[:n]
            view = pread_into(fd, chunk, pos, f"{file}: tensor {name}", SourceError)
            if on_read is not None:
                on_read(file, pos, view)
            yield chunk
            pos += n
    finally:
        os.close(fd)


def check_scale_values(ckpt: Checkpoint, ct, canonical: torch.Tensor) -> None:
    """Refuse NaN / Inf scales (float scales) and e8m0 code 255 (NaN) before they are written:
    FormatError naming the source tensor and its file. Two reductions (no mask) when the scales are clean."""
    if not ct.role.endswith("_scale") or canonical.numel() == 0:
        return
    if canonical.dtype.is_floating_point and canonical.element_size() > 1:
        # amax / amin propagate NaN; +Inf shows in the max, -Inf in the min
        if bool(torch.isfinite(canonical.amax())) and bool(torch.isfinite(canonical.amin())):
            return
        bad = ~torch.isfinite(canonical)
        what = "NaN or Inf"
    else:
        codes = canonical.view(torch.uint8)
        if int(codes.amax()) != E8M0_NAN:      # 255 is the largest code: any NaN code is the maximum
            return
        bad = codes == E8M0_NAN
        what = "e8m0 code 255 (NaN)"
    for p in ct.pieces:
        lo, hi = p.rows
        region = bad[p.expert, lo:hi] if p.expert is not None else bad[:, lo:hi]
        if bool(region.any()):
            raise FormatError(f"{ckpt.info(p.name).file}: tensor {p.name}: scale holds {what} "
                              f"({int(region.sum())} values); the checkpoint is damaged")
    raise FormatError(f"{ct.role}: scale holds {what}")  # pragma: no cover - pieces cover the tensor


def run_unit(root: str, out: str, unit: Unit, device: str = "cpu", on_bytes=None, on_read=None) -> list[dict]:
    """Write the files of one unit and its journal entry; returns [WrittenFile.to_json()] in file order.

    Rank unit: a reader thread reads (and checks) each item's canonical tensor one ahead; this thread applies
    its chain; a writer thread hands part r to rank r's writer. Shared unit: this thread reads each tensor's
    source bytes in chunks, the writer thread copies them unchanged. `on_read(file, offset, bytes)` sees the
    source bytes read (SourceHasher.feed)."""
    out_p = Path(out)
    metadata = {"format": "pt"}
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(PartWriter(out_p, f, unit.entries(), metadata)) for f in unit.files]
        sink = stack.enter_context(_PartSink(on_bytes))     # exits (joins) before the writers abort
        pool = stack.enter_context(BufferPool())             # reused, page-aligned buffers (this thread)
        if unit.is_shared:
            w = writers[0]
            for s in unit.shared:
                sink.submit(w.begin, s.entry.name)
                for chunk in _read_source_chunks(Path(root), s.file, s.entry.name, s.start, s.entry.nbytes, pool,
                                                 on_read):
                    sink.submit(w.append, chunk, nbytes=len(chunk))
                sink.submit(w.end)
                sink.submit(_maybe_kill, "tensor")
        else:
            reader = stack.enter_context(_CanonicalReader(root, unit.items, on_read))
            for item in unit.items:
                canonical = reader.next()
                if device != "cpu":
                    canonical = canonical.to(device)
                parts = apply_chain(item.chain, canonical)
                del canonical
                if len(parts) != len(writers):
                    raise RuntimeError(f"{item.name}: chain gave {len(parts)} parts for {len(writers)} ranks")
                sink.submit(_write_parts, writers, item.name, parts, nbytes=item.stored.nbytes * len(writers))
                del parts
        sink.finish()
        results = [w.close() for w in writers]
    records = [r.to_json() for r in results]
    write_file_atomic(out_p, _journal(out_p, unit).name,
                      json.dumps({"fingerprint": unit.fingerprint(), "files": records}).encode())
    _maybe_kill("part")
    return records


def _write_parts(writers: list[PartWriter], name: str, parts: list) -> None:
    for w, part in zip(writers, parts):
        w.write(name, part)
        _maybe_kill("tensor")


class _Worker:
    """A daemon thread running `self._run()`; `_error` carries its exception to the owner, `_stop` asks it to
    end early. Subclasses provide `_run` and their own queue."""

    def __init__(self) -> None:
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._guarded, daemon=True)
        self._thread.start()

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    @staticmethod
    def _put(q: queue.Queue, item, alive) -> None:
        """q.put that gives up (RuntimeError) if the other side has gone (`alive()` False)."""
        while True:
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                if not alive():
                    raise RuntimeError("convert worker thread ended") from None


class _CanonicalReader(_Worker):
    """Reads each item's canonical tensor (`read_canonical_pread`, checked by `check_scale_values`) in a thread,
    one item ahead of the caller, asking the OS to read ahead the item after that (`prefetch_canonical`).
    `next()` returns them in order and re-raises the reader's error. The thread has its own BufferPool."""

    def __init__(self, root: str, items, on_read=None) -> None:
        self._ckpt = Checkpoint.open(root)
        self._items, self._on_read = items, on_read
        self._q: queue.Queue = queue.Queue(maxsize=1)
        super().__init__()

    def _run(self) -> None:
        try:
            with BufferPool():
                for i, item in enumerate(self._items):
                    if self._stop:
                        return
                    if i + 1 < len(self._items):   # the disk reads the next tensor while this one is worked on
                        prefetch_canonical(self._ckpt, self._items[i + 1].canonical)
                    canonical = read_canonical_pread(self._ckpt, item.canonical, self._on_read)
                    self._ckpt.close()     # unmap what a piece read through safe_open touched (bounded RSS)
                    check_scale_values(self._ckpt, item.canonical, canonical)
                    self._put(self._q, canonical, lambda: not self._stop)
                    del canonical
        finally:
            self._ckpt.close()

    def next(self) -> torch.Tensor:
        while True:
            try:
                return self._q.get(timeout=0.2)
            except queue.Empty:
                if not self._thread.is_alive():
                    self._raise()
                    raise RuntimeError("canonical reader thread ended early")

    def __enter__(self) -> "_CanonicalReader":
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        while self._thread.is_alive():
            try:                    # unblock a reader waiting to hand over a tensor
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


class _PartSink(_Worker):
    """Runs write jobs (`submit(fn, *args, nbytes=0)`) in order in a background thread, so reading and the next
    tensor's chain go on while this one is written and hashed (the writes and hashes release the GIL). The
    queue holds up to DEPTH jobs, so the convert thread keeps working through a stalled write. DEPTH 3 vs 1,
    gpt-oss-20b aiter/mi355x tp4 on the 2-core VM (page-cache writes then): 35.5 / 36.3 s vs 38.0 / 41.5 /
    49.6 s, peak RSS 1.20 GB both.

    `submit` blocks while the queue is full and re-raises a job's error (disk full ...); after an error the
    remaining jobs are dropped. `finish()` waits for every job. Leaving the `with` block by an exception
    stops the thread first. `on_bytes(n)` is called after a job submitted with nbytes=n (progress)."""

    DEPTH = 3

    def __init__(self, on_bytes=None) -> None:
        self._on_bytes = on_bytes
        self._q: queue.Queue = queue.Queue(maxsize=self.DEPTH)
        super().__init__()

    def _run(self) -> None:
        while (job := self._q.get()) is not None:
            if self._error is not None or self._stop:
                continue
            fn, args, nbytes = job
            try:
                fn(*args)
                if nbytes and self._on_bytes:
                    self._on_bytes(nbytes)
            except BaseException as exc:
                self._error = exc
            del job, args

    def submit(self, fn, *args, nbytes: int = 0) -> None:
        self._raise()
        self._put(self._q, (fn, args, nbytes), lambda: self._raise() or self._thread.is_alive())

    def finish(self) -> None:
        self._q.put(None)
        self._thread.join()
        self._raise()

    def __enter__(self) -> "_PartSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread.is_alive():
            self._stop = True
            self._q.put(None)
            self._thread.join()


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _unit_is_done(out: Path, unit: Unit) -> list[dict] | None:
    """The recorded files of a finished unit, if its journal matches this plan and its files still hash the same."""
    j = _journal(out, unit)
    if not j.is_file() or j.is_symlink():
        return None
    try:
        rec = json.loads(j.read_text())
        if rec.get("fingerprint") != unit.fingerprint():
            return None
        files = rec["files"]
        if [f["name"] for f in files] != list(unit.files):
            return None
        if any(TENSOR_HASH not in t for f in files for t in f["tensors"].values()):
            return None          # a journal of an older moepack (sha256 tensor hashes): redo the unit
        for f in files:
            p = out / f["name"]
            if p.is_symlink() or not p.is_file() or p.stat().st_size != f["size"] or file_digest(p) != (f["size"], f["digest"]):
                return None
        return files
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- OUT handling

def _moepack_owned(name: str, extra_names: set[str]) -> bool:
    return (name == MANIFEST_NAME or name in extra_names or name.startswith(".moepack")
            or (name.startswith(".") and name.endswith(TEMP_SUFFIX))
            or (name.startswith(("model-rank-", "shared-part-")) and name.endswith(".safetensors")))


def _prepare_out(out: Path, src_root: Path, extra_names: set[str], resume: bool, overwrite: bool) -> None:
    """Refuse a bad OUT (symlinks, a file, the source itself, non-empty without --resume/--overwrite)."""
    check_out_dir(out)
    if out.exists() and out.resolve() == src_root.resolve():
        raise BadInputError(f"OUT {out} is the source folder; choose another folder")
    if out.exists():
        entries = sorted(p.name for p in out.iterdir())
        if entries and not (resume or overwrite):
            raise BadInputError(f"OUT {out} is not empty ({len(entries)} entries, e.g. {entries[0]}); "
                                "pass --resume to continue an interrupted convert or --overwrite to replace it")
        foreign = [n for n in entries if not _moepack_owned(n, extra_names) or (out / n).is_dir()]
        if foreign and overwrite:
            raise BadInputError(f"--overwrite refused: OUT {out} holds {foreign[0]!r}, which moepack did not write")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise environment_error(exc, out, "creating") from exc


def _clear_out(out: Path, extra_names: set[str], keep_journal: bool) -> None:
    """Remove moepack's files from OUT: the manifest first (the folder stops counting as complete)."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for p in sorted(out.iterdir()):
        if p.name == LOCK_NAME or p.is_dir():
            continue
        if keep_journal and (p.name.startswith(JOURNAL_PREFIX) or p.suffix == ".safetensors"):
            continue
        if _moepack_owned(p.name, extra_names):
            p.unlink()


# ----------------------------------------------------------------------------- manifest

def _versions() -> dict:
    import safetensors
    return {"moepack": __version__, "torch": torch.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def build_manifest(plan: ConvertPlan, ckpt: Checkpoint, written: dict[str, dict], extra: dict[str, dict],
                   source_files: list[dict], variant: str | None) -> dict:
    """The manifest dict (docs/DESIGN.md) from the plan and the written files' records."""
    desc, target = plan.desc, plan.target
    first = plan.layer_plans[desc.moe_layers[0].index]
    summary = desc.summary()
    files: dict[str, dict] = {}
    for u in plan.units:
        for r, f in enumerate(u.files):
            files[f] = {"rank": None if u.is_shared else r, "size": written[f]["size"], "digest": written[f]["digest"]}
    files.update(extra)
    unit_of = {it.name: u for u in plan.rank_units for it in u.items}
    experts = []
    for it in plan.items:
        u = unit_of[it.name]
        experts.append({
            "layer": it.layer, "role": it.role, "name": it.name,
            "logical_shape": list(it.canonical.shape), "logical_dtype": it.canonical.dtype,
            "sources": [{"name": p.name, "expert": p.expert, "rows": list(p.rows), "shape": list(p.shape),
                         "dtype": p.dtype} for p in it.canonical.pieces],
            "chain": it.chain.to_json(),
            "ranks": [{"file": f, "dtype": it.stored.dtype, "shape": list(it.stored.shape),
                       TENSOR_HASH: written[f]["tensors"][it.name][TENSOR_HASH]} for f in u.files]})
    shared = {}
    for u in plan.shared_units:
        f = u.files[0]
        for s in u.shared:
            shared[s.entry.name] = {"file": f, "dtype": s.entry.dtype, "shape": list(s.entry.shape),
                                    TENSOR_HASH: written[f]["tensors"][s.entry.name][TENSOR_HASH]}
    target_json = {"backend": target.backend, "hardware": target.hardware, "arch": target.arch,
                   "quant": target.quant, "layout_version": getattr(target, "layout_version", LAYOUT_VERSION),
                   "variant": target.variant}
    return {
        "moepack_manifest": SCHEMA_VERSION,
        "tool": _versions(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {**ckpt.source.to_json(), "family": desc.family, "files": source_files},
        "target": target_json,
        "parallel": {"tp": plan.tp, "ep": plan.ep, "world_size": plan.world_size,
                     "ranks": [{"rank": ri.rank, "ep_rank": ri.ep_rank, "tp_rank": ri.tp_rank,
                                "experts": list(ri.experts), "files": plan.rank_files(ri.rank)} for ri in first.ranks]},
        "model": {**{k: summary[k] for k in ("family", "quant", "num_layers", "moe_layers", "num_experts", "hidden",
                                             "intermediate", "arrangement", "has_bias", "activation", "routing")},
                  "intermediate_per_rank": list(first.intermediate_per_rank),
                  "intermediate_padded": first.intermediate_padded, "hidden_padded": first.hidden_padded,
                  "top_k": desc.routing.top_k},
        "files": files,
        "experts": experts,
        "shared": shared,
    }


# ----------------------------------------------------------------------------- convert

class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="convert",
                            file=sys.stderr, dynamic_ncols=True)
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        if self.bar is not None:
            with self._lock:
                self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_free_space(out: Path, nbytes: int) -> None:
    """Refuse up front (EnvironmentError_, exit 4) when OUT's file system has less free space than the tensor
    bytes still to write, instead of failing with "disk full" part way through."""
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return                  # cannot tell: the writes report a full disk if it happens
    if nbytes > free:
        raise EnvironmentError_(f"not enough space in {out}: this convert writes {nbytes / 1e9:.2f} GB, "
                                f"{free / 1e9:.2f} GB are free")


def _in_process(workers: int, todo: list[Unit]) -> bool:
    return workers <= 1 or len(todo) <= 1


def _run_units(plan: ConvertPlan, out: Path, todo: list[Unit], workers: int, device: str,
               progress: _Progress, on_read=None) -> dict[str, dict]:
    written: dict[str, dict] = {}
    if _in_process(workers, todo):
        # shared units first: their tensors lead most source files, so the source hash reads files in order
        for u in sorted(todo, key=lambda u: not u.is_shared):
            for rec in run_unit(str(plan.root), str(out), u, device, progress.update, on_read):
                written[rec["name"]] = rec
        return written
    import multiprocessing as mp
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(run_unit, str(plan.root), str(out), u, device): u for u in todo}
        try:
            for fut in futures:
                for rec in fut.result():
                    written[rec["name"]] = rec
                progress.update(futures[fut].nbytes)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return written


def convert(src, out, backend: str, hardware: str, tp: int = 1, ep: int = 1, workers: int = 1,
            revision: str | None = None, max_shard_size: int | str = "5GB", resume: bool = False,
            overwrite: bool = False, dry_run: bool = False, device: str = "cpu", progress: bool = True,
            variant: str | None = None) -> dict:
    """Convert SRC (folder or Hub id) into OUT for a backend/hardware over tp ranks (ep expert groups).

    Returns the manifest dict with an extra "summary" (out, files, bytes, padding_bytes, padding_fraction,
    seconds, resumed_units, warnings); with dry_run, {"dry_run": True, "plan", "parts", "model_summary",
    "source"} and nothing is written. Errors: BadInputError subclasses (exit 2), EnvironmentError_ (exit 4)."""
    t0 = time.monotonic()
    # torch's CPU allocator: 2 MiB-aligned, madvise(HUGEPAGE) buffers for large tensors, read when torch first
    # allocates one (also by --workers children): the fresh part buffers cost 512x fewer page faults
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if resume and overwrite:
        raise BadInputError("--resume and --overwrite exclude each other")
    for flag, v in (("--tp", tp), ("--ep", ep), ("--workers", workers)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise BadInputError(f"{flag} must be a positive integer, got {v!r}")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise BadInputError(f"--device {device!r} must be cpu or cuda")
    if device != "cpu" and not torch.cuda.is_available():
        raise EnvironmentError_(f"--device {device}: no CUDA device available")
    shard_bytes = parse_size(max_shard_size)

    ckpt = Checkpoint.open(src, revision)
    desc = describe(ckpt)
    target = get_target(backend, hardware, desc.quant, variant)
    plan = build_plan(ckpt, desc, target, tp, ep, shard_bytes, workers)
    from ..inspect import describe_json, plan_json
    plan_view = plan_json(desc, backend, hardware, tp, ep, variant)
    if dry_run:
        return {"dry_run": True, "plan": plan_view, "parts": plan.summary(),
                "model_summary": describe_json(ckpt, desc), "source": ckpt.source.to_json()}

    out = Path(out)
    extra_names = {p.name for p in ckpt.extra_files}
    _prepare_out(out, Path(ckpt.root), extra_names, resume, overwrite)
    with OutputLock(out):
        check_out_dir(out)
        _clear_out(out, extra_names, keep_journal=resume)
        remove_temp_files(out)
        done: dict[str, dict] = {}
        todo: list[Unit] = []
        for u in plan.units:
            recs = _unit_is_done(out, u) if resume else None
            if recs is None:
                todo.append(u)
            else:
                done.update({r["name"]: r for r in recs})
        _check_free_space(out, sum(u.nbytes for u in todo))
        if _in_process(workers, todo):   # hashes the bytes the units read (one read of the source)
            hasher = SourceHasher(ckpt)
            on_read = hasher.feed
        else:                           # --workers children read the source: hash it again in a thread
            hasher, on_read = _Background(ckpt.provenance, 1), None
        bar = _Progress(sum(u.nbytes for u in todo), progress)
        try:
            written = _run_units(plan, out, todo, workers, device, bar, on_read)
        except BaseException:
            if isinstance(hasher, SourceHasher):
                hasher.close()
            raise
        finally:
            bar.close()
        written.update(done)
        extra: dict[str, dict] = {}
        for p in ckpt.extra_files:
            data = p.read_bytes()
            write_file_atomic(out, p.name, data)
            extra[p.name] = {"rank": None, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        data = build_manifest(plan, ckpt, written, extra, hasher.result(), variant)
        stored = sum(f["size"] for f in data["files"].values())
        data["summary"] = {
            "out": str(out), "files": len(data["files"]) + 1, "bytes": stored,
            "padding_bytes": plan_view["padding_bytes"],
            "padding_fraction": plan_view["padding_bytes"] / plan_view["bytes"] if plan_view["bytes"] else 0.0,
            "seconds": round(time.monotonic() - t0, 3), "resumed_units": len(plan.units) - len(todo),
            "warnings": list(plan.warnings)}
        _maybe_kill("manifest")
        Manifest(data).save(out)
        for u in plan.units:
            _journal(out, u).unlink(missing_ok=True)
    ckpt.close()
    return data


class _Background(_Worker):
    """Run fn(*args) in a thread (source hashing overlaps the conversion; hashlib releases the GIL)."""

    def __init__(self, fn, *args) -> None:
        self._fn, self._args, self._value = fn, args, None
        super().__init__()

    def _run(self) -> None:
        self._value = self._fn(*self._args)

    def result(self):
        self._thread.join()
        self._raise()
        return self._value
