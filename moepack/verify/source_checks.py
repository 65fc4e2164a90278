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

from ..convert.fastpath import apply_chain, read_canonical_pread
from ..convert.manifest import Manifest
from ..errors import MoepackError
from ..layouts.transform import Chain
from .hashing import hash_files
from .report import FAIL, OK, SKIP, Row
from ..formats.assemble import read_canonical, split_canonical
from .tensors import as_bits, canonical_tensor, first_difference, first_true, read_stored, show_value

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


def check_entry(entry: dict, readable: dict[tuple[str, int], Path], ckpt=None) -> list[Row]:
    """padding (and, with the source `Checkpoint` `ckpt`, reconstruct) rows for one manifest expert entry.

    `readable[(tensor name, rank)]` is the file to read a part from, for the parts that passed the file,
    size, header, dtype and shape checks; an entry with any other part is skipped."""
    name = entry["name"]
    checks = ["padding"] + (["reconstruct"] if ckpt is not None else [])
    missing = [r for r in range(len(entry["ranks"])) if (name, r) not in readable]
    if missing:
        return [Row(name, c, SKIP, f"its part on rank {missing[0]} failed an earlier check") for c in checks]
    try:
        chain = load_chain(entry["chain"])
        parts = [read_stored(readable[(name, r)], name) for r in range(len(entry["ranks"]))]
    except (MoepackError, ValueError, RuntimeError) as e:
        return [Row(name, c, FAIL, f"cannot read the chain or the stored parts: {e}") for c in checks]
    try:
        canonical, why = chain.invert(parts), ""
    except (MoepackError, ValueError, RuntimeError, IndexError) as e:
        canonical, why = None, f"the stored parts do not invert through the chain: {e}"

    if canonical is not None:
        rows = _compare_parts(name, "padding", parts, _apply(chain, canonical),
                              "differs from the chain re-applied to its own inversion (pad value or replica)")
    else:
        rows = _locate_bad_padding(entry, chain, parts)
        if not rows:
            rows = [Row(name, "padding", FAIL, why)]
    if ckpt is not None:
        rows += _reconstruct(entry, chain, parts, canonical, ckpt, why)
    return rows


def _pattern(shape: tuple[int, ...], dtype: torch.dtype, byte: int) -> torch.Tensor:
    """A tensor of `shape` and `dtype` whose every byte is `byte`."""
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.full((*shape[:-1], shape[-1] * size) if shape else (size,), byte, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


def _locate_bad_padding(entry: dict, chain: Chain, parts: list[torch.Tensor]) -> list[Row]:
    """FAIL rows for the ranks whose stored part holds a non-pad value where the layout puts padding.

    Pad positions are those whose value does not depend on the input: the chain applied to a canonical
    tensor of all 0x00 bytes and to one of all 0x55 bytes agrees there (and gives the pad value)."""
    shape, dtype = tuple(entry["logical_shape"]), getattr(torch, entry["logical_dtype"])
    try:
        a, b = (chain.apply(_pattern(shape, dtype, byte)) for byte in (0x00, 0x55))
    except (MoepackError, ValueError, RuntimeError, IndexError):
        return []
    rows = []
    for rank, (got, pa, pb) in enumerate(zip(parts, a, b)):
        if got.shape != pa.shape or got.dtype != pa.dtype:
            continue
        pad = as_bits(pa) == as_bits(pb)
        bad = pad & (as_bits(got) != as_bits(pa))
        if bool(bad.any()):
            flat, idx = first_true(bad)
            rows.append(Row(entry["name"], "padding", FAIL,
                            f"{int(bad.sum())} of {int(pad.sum())} pad elements hold a non-pad value; first at {idx}: "
                            f"{show_value(got.reshape(-1)[flat])}, pad value {show_value(pa.reshape(-1)[flat])}", rank))
    return rows


def _apply(chain: Chain, canonical: torch.Tensor) -> list[torch.Tensor] | str:
    """`chain.apply(canonical)`, through convert's fused path (bit-identical, fewer copies)."""
    try:
        return apply_chain(chain, canonical)
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


def _reconstruct(entry: dict, chain: Chain, parts, canonical, ckpt, why: str) -> list[Row]:
    """reconstruct rows: the inverted chain split into source tensors equals each of them bit for bit; when
    one differs (or the parts do not invert), each rank's part is compared with the chain applied to the source."""
    name = entry["name"]
    ct = canonical_tensor(entry)
    if canonical is not None:
        wrong = []
        try:
            for src_name, got in split_canonical(canonical, ct).items():
                diff = first_difference(got, ckpt.get(src_name))
                if diff is not None:
                    wrong.append(f"{src_name} ({diff})")
        except MoepackError as e:
            return [Row(name, "reconstruct", FAIL, str(e))]
        if not wrong:
            return [Row(name, "reconstruct", OK, f"{len(ct.pieces)} source tensors reproduced bit-exactly")]
        note = _value_exact(chain, ct, canonical, ckpt)
        if note is not None:
            return [Row(name, "reconstruct", OK, note)]
        why = (f"{len(wrong)} of {len(ct.pieces)} source tensors differ after inverting the chain: "
               f"{'; '.join(wrong[:2])}{' ...' if len(wrong) > 2 else ''}")
    try:
        expected = _apply(chain, read_canonical_pread(ckpt, ct))
    except MoepackError as e:
        expected = f"cannot assemble the canonical tensor from the source: {e}"
    rows = [Row(name, "reconstruct", FAIL, why)]
    rows += [r for r in _compare_parts(name, "reconstruct", parts, expected,
                                       "differs from the chain applied to the source") if r.result == FAIL]
    return rows


def _value_exact(chain: Chain, ct, canonical: torch.Tensor, ckpt) -> str | None:
    """When the chain itself is documented lossy in bits but not in value (gfx942 e4m3fnuz has no -0, so
    FP8 -0 is stored as +0): a note if the stored data is exactly `chain.canonicalize(source)` and that
    changes no value; None otherwise."""
    try:
        src = read_canonical(ckpt, ct)
        round_trip = chain.canonicalize(src)
    except (MoepackError, ValueError, RuntimeError):
        return None
    if first_difference(canonical, round_trip) is not None:
        return None
    a, b = src.to(torch.float64), round_trip.to(torch.float64)
    if not torch.equal(a.isnan(), b.isnan()) or not torch.equal(a.nan_to_num(), b.nan_to_num()):
        return None
    changed = int((as_bits(src) != as_bits(round_trip)).sum())
    return (f"{len(ct.pieces)} source tensors reproduced value-exactly; {changed} elements differ only in bits "
            f"the chain cannot store (e.g. FP8 -0 as +0), exactly as the chain maps them")
