"""manifest.json: what a converted folder holds, versioned (see docs/DESIGN.md and manifest.schema.json).

`Manifest` is a thin wrapper over the JSON dict. `validate()` checks structure by hand (no
jsonschema dependency) with messages that name the key at fault; `safe_member(root, name)` is the one
place that turns a file name from a manifest into a path, refusing anything that could leave OUT.
The manifest is written last (`save`), atomically: its presence means the folder is complete.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import EnvironmentError_, ManifestError
from ..hashing import TENSOR_HASH, TENSOR_HASH_HEX_LEN
from .writer import is_plain_name, write_file_atomic

SCHEMA_VERSION = 2                 # 2: tensor records carry xxh3_128 (1: sha256)
MANIFEST_NAME = "manifest.json"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "manifest.schema.json"

# key -> expected type(s), for the top level and each nested record. `validate` walks these.
_INT = (int,)
_STR = (str,)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
_LIST = (list,)
_DICT = (dict,)

REQUIRED: dict[str, dict[str, tuple]] = {
    "": {"moepack_manifest": _INT, "tool": _DICT, "source": _DICT, "target": _DICT, "parallel": _DICT,
         "model": _DICT, "files": _DICT, "experts": _LIST, "shared": _DICT},
    "tool": {"moepack": _STR},
    "source": {"path": _OPT_STR, "repo_id": _OPT_STR, "revision": _OPT_STR, "commit": _OPT_STR,
               "family": _STR, "files": _LIST},
    "source.files[]": {"name": _STR, "size": _INT, "sha256": _STR},
    "target": {"backend": _STR, "hardware": _STR, "arch": _STR, "quant": _STR, "layout_version": _INT},
    "parallel": {"tp": _INT, "ep": _INT, "world_size": _INT, "ranks": _LIST},
    "parallel.ranks[]": {"rank": _INT, "ep_rank": _INT, "tp_rank": _INT, "experts": _LIST, "files": _LIST},
    "model": {"family": _STR, "quant": _STR, "num_layers": _INT, "moe_layers": _LIST, "num_experts": _INT,
              "hidden": _INT, "intermediate": _INT, "intermediate_per_rank": _LIST,
              "intermediate_padded": _INT, "top_k": _INT, "arrangement": _STR, "has_bias": (bool,),
              "activation": _DICT, "routing": _DICT},
    "files{}": {"rank": _OPT_INT, "size": _INT},     # + "digest" (part files, see writer.part_digest) or "sha256"
    "experts[]": {"layer": _INT, "role": _STR, "name": _STR, "logical_shape": _LIST, "logical_dtype": _STR,
                  "sources": _LIST, "chain": _LIST, "ranks": _LIST},
    "experts[].sources[]": {"name": _STR, "expert": _OPT_INT, "rows": _LIST, "shape": _LIST, "dtype": _STR},
    "experts[].ranks[]": {"file": _STR, "dtype": _STR, "shape": _LIST, TENSOR_HASH: _STR},
    "shared{}": {"file": _STR, "dtype": _STR, "shape": _LIST, TENSOR_HASH: _STR},
}


def safe_member(root: Path | str, name: Any) -> Path:
    """OUT/name for a file name read from a manifest, checked without opening it.

    `name` must be a plain relative file name: a non-empty string without path separators, not '.'
    or '..', no NUL, not absolute; the path must not be a symlink and must resolve to a direct child
    of root. Anything else raises ManifestError naming it."""
    _check_plain(name)
    root = Path(root)
    path = root / name
    if path.is_symlink():
        raise ManifestError(f"manifest file {name!r} is a symlink (refused, never opened)")
    if path.resolve().parent != root.resolve():
        raise ManifestError(f"manifest file {name!r} resolves outside {root} (refused)")
    return path


def _check_plain(name: Any) -> None:
    if not is_plain_name(name):
        raise ManifestError(f"manifest file name {name!r} is not a plain name inside the folder (refused)")


def _typename(types: tuple) -> str:
    names = {int: "integer", str: "string", list: "array", dict: "object", bool: "boolean", type(None): "null",
             float: "number"}
    return " or ".join(names[t] for t in types)


def _check_record(obj: Any, kind: str, where: str) -> None:
    if not isinstance(obj, dict):
        raise ManifestError(f"manifest {where or 'top level'} must be an object")
    for key, types in REQUIRED[kind].items():
        if key not in obj:
            raise ManifestError(f"manifest {where + '.' if where else ''}{key} is missing")
        v = obj[key]
        ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
        if not ok:
            raise ManifestError(f"manifest {where + '.' if where else ''}{key} must be {_typename(types)}, "
                                f"got {type(v).__name__}")


def _check_int_list(v: Any, where: str) -> None:
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        raise ManifestError(f"manifest {where} must be a list of non-negative integers")


def _check_hex(v: str, where: str, algo: str = "sha256", length: int = 64) -> None:
    if len(v) != length or any(c not in "0123456789abcdef" for c in v):
        raise ManifestError(f"manifest {where} must be {length} lowercase hex characters (a {algo} digest)")


def _check_stored(rec: Any, kind: str, where: str) -> None:
    """A stored tensor record: file, dtype, shape (non-negative ints), tensor hash (`moepack.hashing`)."""
    _check_record(rec, kind, where)
    _check_int_list(rec["shape"], f"{where}.shape")
    _check_hex(rec[TENSOR_HASH], f"{where}.{TENSOR_HASH}", TENSOR_HASH, TENSOR_HASH_HEX_LEN)


class Manifest:
    """The manifest dict with load / save / validate. `m.data` is the dict; `m["key"]` reads it."""

    def __init__(self, data: dict) -> None:
        self.data = data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, sort_keys=False) + "\n"

    # ----------------------------------------------------------------- files
    @classmethod
    def load(cls, out: Path | str, validate: bool = True) -> "Manifest":
        """Read OUT/manifest.json (ManifestError if absent, unreadable, not JSON, or invalid)."""
        out = Path(out)
        if out.is_symlink():
            raise ManifestError(f"folder {out} is a symlink (refused)")
        path = out / MANIFEST_NAME
        if path.is_symlink():
            raise ManifestError(f"{path} is a symlink (refused, never opened)")
        if not path.is_file():
            raise ManifestError(f"no {MANIFEST_NAME} in {out}: not a complete moepack folder "
                                "(an interrupted convert leaves none; rerun with --resume)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        except UnicodeDecodeError:
            raise ManifestError(f"{path} is not UTF-8 text") from None
        except OSError as exc:
            raise EnvironmentError_(f"cannot read {path}: {exc.strerror}") from None
        m = cls(data)
        if validate:
            m.validate(out)
        return m

    def save(self, out: Path | str) -> Path:
        """Validate, then write OUT/manifest.json atomically (temp + fsync + rename + fsync OUT)."""
        self.validate(out)
        write_file_atomic(Path(out), MANIFEST_NAME, self.to_json().encode())
        return Path(out) / MANIFEST_NAME

    # ----------------------------------------------------------------- validation
    def validate(self, root: Path | str | None = None) -> "Manifest":
        """Check structure, types, schema version and internal consistency; with `root`, also that every
        file name is a safe member of root (nothing is opened). Raises ManifestError naming the key."""
        d = self.data
        if not isinstance(d, dict):
            raise ManifestError("manifest must be a JSON object")
        version = d.get("moepack_manifest")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise ManifestError(f"manifest made by a newer moepack (schema {version} > {SCHEMA_VERSION}); upgrade moepack")
        if isinstance(version, int) and not isinstance(version, bool) and 1 <= version < SCHEMA_VERSION:
            raise ManifestError(f"manifest.json: schema version {version} was written by an older moepack; convert again")
        _check_record(d, "", "")
        if version != SCHEMA_VERSION:
            raise ManifestError(f"manifest schema {version} is not supported (expected {SCHEMA_VERSION})")
        for key in ("tool", "source", "target", "parallel", "model"):
            _check_record(d[key], key, key)
        for i, f in enumerate(d["source"]["files"]):
            _check_record(f, "source.files[]", f"source.files[{i}]")
            _check_hex(f["sha256"], f"source.files[{i}].sha256")

        files = d["files"]
        for name, rec in files.items():
            _check_record(rec, "files{}", f"files[{name!r}]")
            keys = [k for k in ("digest", "sha256") if k in rec]
            if not keys:
                raise ManifestError(f"manifest files[{name!r}] needs a digest (part files) or a sha256 (copied files)")
            for k in keys:
                if not isinstance(rec[k], str):
                    raise ManifestError(f"manifest files[{name!r}].{k} must be string, got {type(rec[k]).__name__}")
                _check_hex(rec[k], f"files[{name!r}].{k}")
            if root is not None:
                safe_member(root, name)
            else:
                _check_plain(name)

        par = d["parallel"]
        tp, ep, world = par["tp"], par["ep"], par["world_size"]
        if tp < 1 or ep < 1 or world != tp:
            raise ManifestError(f"manifest parallel: world_size {world} must equal tp {tp} (ep {ep} divides it)")
        if tp % ep:
            raise ManifestError(f"manifest parallel: ep {ep} does not divide tp {tp}")
        ranks = par["ranks"]
        if len(ranks) != world:
            raise ManifestError(f"manifest parallel.ranks has {len(ranks)} entries, world_size is {world}")
        for i, r in enumerate(ranks):
            where = f"parallel.ranks[{i}]"
            _check_record(r, "parallel.ranks[]", where)
            if r["rank"] != i:
                raise ManifestError(f"manifest {where}.rank is {r['rank']}, expected {i}")
            tp_local = tp // ep
            if (r["ep_rank"], r["tp_rank"]) != (i // tp_local, i % tp_local):
                raise ManifestError(f"manifest {where}: ep_rank/tp_rank {r['ep_rank']}/{r['tp_rank']} do not match "
                                    f"rank {i} (tp {tp}, ep {ep})")
            _check_int_list(r["experts"], f"{where}.experts")
            for f in r["files"]:
                if f not in files:
                    raise ManifestError(f"manifest {where}.files names {f!r}, which is not in files")
                if files[f]["rank"] != i:
                    raise ManifestError(f"manifest files[{f!r}].rank is {files[f]['rank']}, but rank {i} lists it")

        model = d["model"]
        _check_int_list(model["moe_layers"], "model.moe_layers")
        _check_int_list(model["intermediate_per_rank"], "model.intermediate_per_rank")
        if len(model["intermediate_per_rank"]) not in (0, tp // ep):
            raise ManifestError(f"manifest model.intermediate_per_rank has {len(model['intermediate_per_rank'])} "
                                f"entries, expected tp/ep = {tp // ep}")

        for i, t in enumerate(d["experts"]):
            where = f"experts[{i}]"
            _check_record(t, "experts[]", where)
            _check_int_list(t["logical_shape"], f"{where}.logical_shape")
            for j, s in enumerate(t["sources"]):
                _check_record(s, "experts[].sources[]", f"{where}.sources[{j}]")
            for j, step in enumerate(t["chain"]):
                if not isinstance(step, dict) or not isinstance(step.get("name"), str):
                    raise ManifestError(f"manifest {where}.chain[{j}] must be an object with a name")
            if len(t["ranks"]) != world:
                raise ManifestError(f"manifest {where} ({t['name']}) has {len(t['ranks'])} rank entries, "
                                    f"world_size is {world}")
            for j, rr in enumerate(t["ranks"]):
                rw = f"{where}.ranks[{j}]"
                _check_stored(rr, "experts[].ranks[]", rw)
                f = rr["file"]
                if f not in files:
                    raise ManifestError(f"manifest {rw}.file {f!r} ({t['name']}) is not listed in files")
                if files[f]["rank"] != j:
                    raise ManifestError(f"manifest {rw}.file {f!r} ({t['name']}) belongs to rank "
                                        f"{files[f]['rank']}, not {j}")
        for name, rec in d["shared"].items():
            where = f"shared[{name!r}]"
            _check_stored(rec, "shared{}", where)
            if rec["file"] not in files:
                raise ManifestError(f"manifest {where}.file {rec['file']!r} is not listed in files")
            if files[rec["file"]]["rank"] is not None:
                raise ManifestError(f"manifest {where}.file {rec['file']!r} is a rank file, not a shared one")
        return self

    # ----------------------------------------------------------------- reading helpers
    def rank_files(self, rank: int) -> list[str]:
        return list(self.data["parallel"]["ranks"][rank]["files"])

    def shared_files(self) -> list[str]:
        return sorted({rec["file"] for rec in self.data["shared"].values()})

    def expert_tensors(self) -> Iterator[dict]:
        """Each entry of `experts` (one per layer and role)."""
        return iter(self.data["experts"])
