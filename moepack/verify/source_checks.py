"""Checks that tie the output to its source and to the chain it claims: provenance, reconstruction, padding.

For every expert tensor of the manifest (one layer, one role), with its stored part per rank:

- padding (no source needed): `chain.apply(chain.invert(parts))[r] == parts[r]` bit for bit. Inverting
  drops what the layout added (pad rows/columns, replicated copies); re-applying writes the documented
  pad values (weights/biases 0, e8m0 scales 127, float scales 1.0) and copies again. So a stored part
  that differs holds a non-pad value in a pad region or a replica that disagrees with rank 0's.
- reconstruct (with source): `chain.invert(parts)` read at each source piece equals that source tensor's
  bytes; and, to name the rank at fault, each stored part is compared with `chain.apply(canonical)` of the
  canonical tensor assembled straight from the source.

Tensors are read one manifest entry at a time (all ranks of one layer/role), never the whole folder.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ..convert.manifest import Manifest
from ..errors import MoepackError
from ..layouts.transform import Chain
from .hashing import hash_files
from .report import FAIL, OK, SKIP, Row
from .tensors import canonical_from_source, first_difference, piece_bytes, read_stored, source_bytes

# Modules whose import registers every transform a manifest chain may name.
_TRANSFORM_MODULES = ("moepack.layouts.targets", "moepack.layouts.generic", "moepack.layouts.fp8",
                      "moepack.layouts.triton", "moepack.layouts.aiter", "moepack.layouts.flashinfer")


def load_chain(steps: list[dict]) -> Chain:
    """`Chain.from_json` after importing every module that registers transforms."""
    for mod in _TRANSFORM_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError:
            pass
    return Chain.from_json(steps)


def check_source_files(manifest: Manifest, root: Path, on_bytes=None) -> list[Row]:
    """Each source file the manifest's provenance lists: present under `root`, same size, same sha256."""
    rows: list[Row] = []
    jobs, recs = [], []
    for rec in manifest["source"]["files"]:
        name = rec["name"]
        path = root / name
        if Path(name).name != name or name in (".", ".."):
            rows.append(Row(name, "source-file", FAIL, "provenance names a path, not a file of the source folder"))
        elif not path.is_file():
            rows.append(Row(name, "source-file", FAIL, f"missing from {root}"))
        elif path.stat().st_size != rec["size"]:
            rows.append(Row(name, "source-file", FAIL, f"{path.stat().st_size} bytes, manifest records {rec['size']}"))
        else:
            jobs.append((str(path), {}))
            recs.append(rec)
    for rec, d in zip(recs, hash_files(jobs, on_bytes=on_bytes)):
        if d.sha256 != rec["sha256"]:
            rows.append(Row(rec["name"], "source-file", FAIL,
                            f"sha256 {d.sha256[:16]}..., manifest {rec['sha256'][:16]}... (not the converted source)"))
        else:
            rows.append(Row(rec["name"], "source-file", OK, f"{rec['size']} bytes, sha256 matches"))
    return rows


def check_entry(entry: dict, paths: dict[str, Path], read_source=None) -> list[Row]:
    """padding (and, with `read_source(name) -> Tensor`, reconstruct) rows for one manifest expert entry.

    `paths` maps file names to paths of files that passed the file, size and header checks; an entry
    with a part in any other file is skipped."""
    name = entry["name"]
    checks = ["padding"] + (["reconstruct"] if read_source is not None else [])
    missing = [r["file"] for r in entry["ranks"] if r["file"] not in paths]
    if missing:
        return [Row(name, c, SKIP, f"{missing[0]} failed an earlier check") for c in checks]
    try:
        chain = load_chain(entry["chain"])
        parts = [read_stored(paths[r["file"]], name) for r in entry["ranks"]]
        canonical = chain.invert(parts)
    except (MoepackError, ValueError, RuntimeError, IndexError) as e:
        return [Row(name, c, FAIL, f"cannot invert the chain on the stored parts: {e}") for c in checks]

    rows = _compare_parts(name, "padding", parts, _apply(chain, canonical),
                          "differs from the chain re-applied to its own inversion (pad value or replica)")
    if read_source is None:
        return rows
    rows += _reconstruct(entry, chain, parts, canonical, read_source)
    return rows


def _apply(chain: Chain, canonical: torch.Tensor) -> list[torch.Tensor] | str:
    try:
        return chain.apply(canonical)
    except (MoepackError, ValueError, RuntimeError, IndexError) as e:
        return f"cannot re-apply the chain: {e}"


def _compare_parts(name: str, check: str, parts: list[torch.Tensor], expected, what: str) -> list[Row]:
    if isinstance(expected, str):
        return [Row(name, check, FAIL, expected)]
    rows = []
    for rank, (got, want) in enumerate(zip(parts, expected)):
        diff = first_difference(got, want)
        if diff is None:
            rows.append(Row(name, check, OK, "bit-exact", rank))
        else:
            rows.append(Row(name, check, FAIL, f"stored part {what}: {diff}", rank))
    return rows


def _reconstruct(entry: dict, chain: Chain, parts, canonical: torch.Tensor, read_source) -> list[Row]:
    name = entry["name"]
    wrong = []
    for piece in entry["sources"]:
        try:
            src = source_bytes(read_source(piece["name"]))
        except MoepackError as e:
            return [Row(name, "reconstruct", FAIL, f"source tensor {piece['name']}: {e}")]
        got = piece_bytes(canonical, piece)
        if got.numel() != src.numel() or not torch.equal(got, src):
            wrong.append(piece["name"])
    if not wrong:
        return [Row(name, "reconstruct", OK, f"{len(entry['sources'])} source tensors reproduced bit-exactly")]
    try:
        expected = _apply(chain, canonical_from_source(read_source, entry))
    except (MoepackError, ValueError) as e:
        expected = f"cannot assemble the canonical tensor from the source: {e}"
    rows = [Row(name, "reconstruct", FAIL,
                f"{len(wrong)} of {len(entry['sources'])} source tensors differ after inverting the chain: "
                f"{', '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}")]
    rows += [r for r in _compare_parts(name, "reconstruct", parts, expected,
                                       "differs from the chain applied to the source") if r.result == FAIL]
    return rows
