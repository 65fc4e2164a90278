"""`verify(out, source=None, level="full")`: run the checks of a level and collect them into a `Report`.

| level   | checks                                                                                      |
| ------- | ------------------------------------------------------------------------------------------- |
| quick   | manifest (schema, version, consistency); file (present, inside OUT), size; header, dtype, shape |
| full    | quick + file-hash, tensor-hash; padding (re-applied chain); with source: source-file, plan |
|         | (chains = the target's plan), reconstruct (inverted chains give every source tensor bit-exactly) |
| numeric | full + numeric (each MoE layer through the rank layout vs a float64 source reference)         |

Bad input (no/invalid manifest, a file name that could leave OUT, an unreadable source) raises the
`BadInputError` subclasses (exit 2). A failed check never raises: it is a FAIL row, `report.ok` is False
and `report.exit_code` is 3 (`report.raise_for_failure()` raises `VerificationError`).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from collections import defaultdict
from pathlib import Path

from ..convert.fastpath import BufferPool
from ..convert.manifest import Manifest
from ..errors import BadInputError
from .checks import StoredTensor, check_files, check_hashes, check_tensor_headers, read_headers, stored_tensors
from .numeric import check_layer
from .plan_checks import check_plan
from .report import OK, Report, Row
from .source_checks import check_entry, check_source_files

LEVELS = ("quick", "full", "numeric")



ENTRY_THREADS = 2   # manifest entries checked at once (padding / reconstruct): ~2 tensors' parts in memory

def verify(out, source=None, level: str = "full", progress: bool = True, tokens: int = 8, seed: int = 0) -> Report:
    """Verify the converted folder `out` at `level`; `source` (folder or Hub id) enables the source checks."""
    if level not in LEVELS:
        raise BadInputError(f"--level {level!r}: expected one of {', '.join(LEVELS)}")
    out = Path(out)
    manifest = Manifest.load(out)          # schema, version, safe file names; ManifestError (exit 2) otherwise
    ckpt = _open_source(source) if source is not None and level != "quick" else None
    report = Report(out=str(out), level=level, source=None if source is None else str(source))
    report.extend([Row("manifest.json", "manifest", OK,
                       f"schema {manifest['moepack_manifest']}, {manifest['target']['backend']}/"
                       f"{manifest['target']['hardware']} {manifest['model']['quant']}, "
                       f"tp {manifest['parallel']['tp']} ep {manifest['parallel']['ep']}")])

    tensors = stored_tensors(manifest)
    rows, present = check_files(out, manifest)
    report.extend(rows)
    sized = {n: p for n, p in present.items() if n not in _failed_files(rows)}
    rows, headers = read_headers(present, tensors)      # truncated files too: to name the tensors they lost
    report.extend(rows)
    rows = check_tensor_headers(tensors, headers, set(present))
    report.extend(rows)
    if level == "quick":
        return report

    with _Progress(progress, manifest, ckpt) as bar:
        report.extend(check_hashes(manifest, present, tensors, headers, on_bytes=bar.update))
        if ckpt is not None:
            report.extend(check_source_files(manifest, Path(ckpt.root), on_bytes=bar.update))
    if ckpt is not None:
        report.extend(check_plan(manifest, ckpt))
    readable = _readable_parts(sized, tensors, report.rows)
    # One manifest entry (all ranks of one layer/role) per task; torch copies and reads release the GIL,
    # so two entries in flight keep both cores busy. Rows keep manifest order.
    with ThreadPoolExecutor(max_workers=ENTRY_THREADS, initializer=_thread_buffer_pool) as pool:
        for rows in pool.map(lambda e: check_entry(e, readable, ckpt), manifest["experts"]):
            report.extend(rows)
    if level == "numeric":
        for layer, entries in _layers(manifest).items():
            report.extend([check_layer(manifest.data, layer, entries, readable, ckpt, tokens, seed)])
    return report


def _thread_buffer_pool() -> None:
    """Entry threads reuse their large buffers (inverted and re-applied tensors) instead of faulting in
    fresh, zeroed pages for every entry: a BufferPool active for the thread's life (dropped with it)."""
    BufferPool().__enter__()


def _open_source(source):
    from ..source.checkpoint import Checkpoint

    return Checkpoint.open(source)


def _failed_files(rows: list[Row]) -> set[str]:
    return {r.subject for r in rows if r.result != OK and r.check in ("file", "size")}


def _readable_parts(sized: dict[str, Path], tensors: list[StoredTensor], rows: list[Row]) -> dict[tuple[str, int], Path]:
    """(expert tensor name, rank) -> its file, for the parts whose file has the recorded size and whose header,
    dtype and shape checks passed: safe to `safe_open` and to read as the manifest describes."""
    bad = {(r.subject, r.rank) for r in rows if r.result != OK and r.check in ("header", "dtype", "shape")}
    bad_files = {r.subject for r in rows if r.result != OK and r.check == "header" and r.subject in sized}
    # safe_open validates the whole header: one tensor with bad offsets makes every tensor of its file unreadable
    bad_headers = {(r.subject, r.rank) for r in rows if r.result != OK and r.check == "header"}
    bad_files |= {t.file for t in tensors if (t.name, t.rank) in bad_headers}
    return {(t.name, t.rank): sized[t.file] for t in tensors
            if t.rank is not None and t.file in sized and t.file not in bad_files and (t.name, t.rank) not in bad}


def _layers(manifest: Manifest) -> dict[int, dict[str, dict]]:
    layers: dict[int, dict[str, dict]] = defaultdict(dict)
    for e in manifest["experts"]:
        layers[e["layer"]][e["role"]] = e
    return dict(sorted(layers.items()))


class _Progress:
    """A tqdm bar over the bytes hashed (OUT, then the source files), on stderr; a no-op when disabled."""

    def __init__(self, enabled: bool, manifest: Manifest, ckpt) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            total = sum(r["size"] for r in manifest["files"].values())
            if ckpt is not None:
                total += sum(r["size"] for r in manifest["source"]["files"])
            self.bar = tqdm(total=total, unit="B", unit_scale=True, desc="verify: hashing", leave=False)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
