"""The quick and hash checks: files, sizes, safetensors headers, hashes of files and tensors.

Each check is a function returning `Row`s (see report.py); none of them reads a tensor into memory.
Paths come only from `safe_member` (manifest.py): a name that could leave OUT is refused before
anything is opened (Manifest.load already refuses it as a ManifestError, exit 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..convert.manifest import Manifest, safe_member
from ..convert.writer import part_digest
from ..hashing import TENSOR_HASH
from .hashing import hash_files
from ..source.header import Header, HeaderError, read_header
from .report import FAIL, OK, SKIP, Row


@dataclass(frozen=True)
class StoredTensor:
    """One tensor the manifest promises: `name` in `file`, of `dtype` and `shape`, with tensor hash `content_hash`
    (`moepack.hashing`).
    `rank` is the output rank for expert tensors, None for shared ones."""

    name: str
    rank: int | None
    file: str
    dtype: str
    shape: tuple[int, ...]
    content_hash: str


def stored_tensors(manifest: Manifest) -> list[StoredTensor]:
    """Every tensor the manifest lists: expert tensors per rank, then shared tensors."""
    out = []
    for entry in manifest["experts"]:
        for rank, rec in enumerate(entry["ranks"]):
            out.append(StoredTensor(entry["name"], rank, rec["file"], rec["dtype"], tuple(rec["shape"]),
                                    rec[TENSOR_HASH]))
    for name, rec in manifest["shared"].items():
        out.append(StoredTensor(name, None, rec["file"], rec["dtype"], tuple(rec["shape"]), rec[TENSOR_HASH]))
    return out


def check_files(out: Path, manifest: Manifest) -> tuple[list[Row], dict[str, Path]]:
    """Each file of `manifest["files"]`: present, a regular file inside OUT, of the recorded size.

    Returns the rows and the paths of the files that passed both checks (later checks read only those)."""
    rows: list[Row] = []
    good: dict[str, Path] = {}
    for name, rec in manifest["files"].items():
        rank = rec["rank"]
        path = safe_member(out, name)
        if not path.exists():
            rows.append(Row(name, "file", FAIL, "missing", rank))
            continue
        if not path.is_file():
            rows.append(Row(name, "file", FAIL, "not a regular file", rank))
            continue
        rows.append(Row(name, "file", OK, "present, inside OUT", rank))
        size = path.stat().st_size
        if size != rec["size"]:
            what = "truncated" if size < rec["size"] else "longer than recorded"
            rows.append(Row(name, "size", FAIL, f"{size} bytes, manifest records {rec['size']} ({what})", rank))
        else:
            rows.append(Row(name, "size", OK, f"{size} bytes", rank))
        good[name] = path
    return rows, good


def read_headers(paths: dict[str, Path], tensors: list[StoredTensor]) -> tuple[list[Row], dict[str, Header]]:
    """Parse the header of every file that holds a listed tensor. Files whose header is malformed get
    a FAIL row each and are left out of the returned headers."""
    rows: list[Row] = []
    headers: dict[str, Header] = {}
    ranks = {t.file: t.rank for t in tensors}
    for name in sorted(ranks):
        if name not in paths:
            continue
        try:
            headers[name] = read_header(paths[name])
        except HeaderError as e:
            rows.append(Row(name, "header", FAIL, str(e), ranks[name]))
    return rows, headers


def check_tensor_headers(tensors: list[StoredTensor], headers: dict[str, Header], files_ok: set[str]) -> list[Row]:
    """Each listed tensor is in its file's header, within the file, with the manifest's dtype and shape;
    and each file holds no tensor the manifest does not list."""
    rows: list[Row] = []
    listed: dict[str, set[str]] = {}
    for t in tensors:
        listed.setdefault(t.file, set()).add(t.name)
        h = headers.get(t.file)
        if h is None:
            why = "its file failed the file/size check" if t.file not in files_ok else "its file's header is malformed"
            rows.append(Row(t.name, "header", SKIP, f"{t.file}: {why}", t.rank))
            continue
        e = h.tensors.get(t.name)
        if e is None:
            rows.append(Row(t.name, "header", FAIL, f"not in the header of {t.file}", t.rank))
            continue
        if h.past_end(t.name):
            rows.append(Row(t.name, "header", FAIL, f"{t.file}: data ends at byte {e.end}, past the end of the "
                                                    f"file ({h.file_size} bytes; truncated)", t.rank))
        else:
            rows.append(Row(t.name, "header", OK, f"{t.file} [{e.begin}, {e.end})", t.rank))
        if e.dtype != t.dtype:
            rows.append(Row(t.name, "dtype", FAIL, f"{t.file} stores {e.dtype}, manifest says {t.dtype}", t.rank))
        else:
            rows.append(Row(t.name, "dtype", OK, e.dtype, t.rank))
        if e.shape != t.shape:
            rows.append(Row(t.name, "shape", FAIL, f"{t.file} stores {list(e.shape)}, manifest says {list(t.shape)}",
                            t.rank))
        else:
            rows.append(Row(t.name, "shape", OK, str(list(e.shape)), t.rank))
    for file, h in headers.items():
        for extra in sorted(set(h.tensors) - listed.get(file, set())):
            rows.append(Row(extra, "header", FAIL, f"{file} holds a tensor the manifest does not list", None))
    return rows


def check_hashes(manifest: Manifest, paths: dict[str, Path], tensors: list[StoredTensor],
                 headers: dict[str, Header], on_bytes=None) -> list[Row]:
    """Every listed tensor's hash (`moepack.hashing`) and every present file's hash, one streamed read per file.

    A part file's record holds a `digest` (`convert.writer.part_digest`: sha256 of its header block, then
    each tensor's xxh3_128 in offset order), computed from the tensor hashes of the same read; a copied
    file's record holds the sha256 of the whole file (the whole-file hash runs only for those)."""
    by_file: dict[str, list[StoredTensor]] = {}
    for t in tensors:
        by_file.setdefault(t.file, []).append(t)
    names = sorted(paths)
    jobs = []
    for name in names:
        h = headers.get(name)
        rec = manifest["files"].get(name, {})
        spans = {}
        if h is not None:
            if "digest" in rec:     # every tensor of the header, listed or not, feeds the digest
                spans = {n: (e.begin, e.end) for n, e in h.tensors.items()}
            else:
                spans = {t.name: (h.tensors[t.name].begin, h.tensors[t.name].end)
                         for t in by_file.get(name, []) if t.name in h.tensors}
        jobs.append((str(paths[name]), spans, "sha256" in rec or "digest" not in rec))
    digests = dict(zip(names, hash_files(jobs, on_bytes=on_bytes)))

    rows: list[Row] = []
    for name, rec in manifest["files"].items():
        d = digests.get(name)
        if d is None:
            rows.append(Row(name, "file-hash", SKIP, "file missing", rec["rank"]))
            continue
        bad, good = [], []
        for what in ("digest", "sha256"):
            if what not in rec:
                continue
            got = _part_digest(paths[name], headers.get(name), d) if what == "digest" else d.sha256
            if got is None:
                bad.append("header or tensor bytes unreadable (digest not computable)")
            elif got != rec[what]:
                bad.append(f"{what} {got[:16]}..., manifest {rec[what][:16]}...")
            else:
                good.append(f"{what} {got[:16]}...")
        rows.append(Row(name, "file-hash", FAIL if bad else OK, "; ".join(bad or good), rec["rank"]))
    for t in tensors:
        d = digests.get(t.file)
        got = d.tensors.get(t.name) if d is not None else None
        if got is None:
            rows.append(Row(t.name, "tensor-hash", SKIP, f"{t.file}: tensor bytes not readable", t.rank))
        elif got != t.content_hash:
            rows.append(Row(t.name, "tensor-hash", FAIL, f"{t.file}: {TENSOR_HASH} {got[:16]}..., manifest "
                                                         f"{t.content_hash[:16]}...", t.rank))
        else:
            rows.append(Row(t.name, "tensor-hash", OK, f"{TENSOR_HASH} {got[:16]}...", t.rank))
    return rows


def _part_digest(path: Path, h: Header | None, d) -> str | None:
    """`part_digest` of a part file from its header block and the tensor hashes in `d`; None if unreadable."""
    if h is None or any(n not in d.tensors for n in h.tensors):
        return None
    with open(path, "rb") as f:
        block = f.read(h.data_start)
    order = sorted(h.tensors, key=lambda n: (h.tensors[n].begin, h.tensors[n].end))
    return part_digest(block, (d.tensors[n] for n in order))
