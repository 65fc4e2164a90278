"""Manifest: round trip, each validation failure with a message naming the key, safe_member, the schema file."""
from __future__ import annotations

import copy
import json

import pytest

from moepack.convert.manifest import MANIFEST_NAME, REQUIRED, SCHEMA_PATH, SCHEMA_VERSION, Manifest, safe_member
from moepack.errors import ManifestError

SHA = "ab" * 32
XXH = "cd" * 16          # a tensor record's xxh3_128


def sample() -> dict:
    """A small valid manifest: tp 2, one MoE layer, one expert tensor, one shared tensor."""
    files = {f"model-rank-{r}-part-0.safetensors": {"rank": r, "size": 10, "sha256": SHA} for r in range(2)}
    files["shared-part-0.safetensors"] = {"rank": None, "size": 10, "sha256": SHA}
    files["config.json"] = {"rank": None, "size": 2, "sha256": SHA}
    return {
        "moepack_manifest": SCHEMA_VERSION,
        "tool": {"moepack": "0.1.0", "torch": "2", "safetensors": "0.8", "python": "3.11"},
        "created_utc": "2026-01-01T00:00:00Z",
        "source": {"path": "/src", "repo_id": None, "revision": None, "commit": None, "family": "gpt-oss-mxfp4",
                   "files": [{"name": "model.safetensors", "size": 5, "sha256": SHA}]},
        "target": {"backend": "aiter", "hardware": "mi355x", "arch": "gfx950", "quant": "mxfp4", "layout_version": 1},
        "parallel": {"tp": 2, "ep": 1, "world_size": 2,
                     "ranks": [{"rank": r, "ep_rank": 0, "tp_rank": r, "experts": [0, 1],
                                "files": [f"model-rank-{r}-part-0.safetensors"]} for r in range(2)]},
        "model": {"family": "gpt-oss-mxfp4", "quant": "mxfp4", "num_layers": 1, "moe_layers": [0], "num_experts": 2,
                  "hidden": 64, "intermediate": 64, "intermediate_per_rank": [32, 32], "intermediate_padded": 128,
                  "top_k": 2, "arrangement": "interleaved", "has_bias": True, "activation": {"kind": "swiglu_oai"},
                  "routing": {"kind": "topk_softmax"}},
        "files": files,
        "experts": [{"layer": 0, "role": "w2_bias", "name": "model.layers.0.mlp.experts.w2_bias",
                     "logical_shape": [2, 64], "logical_dtype": "bfloat16",
                     "sources": [{"name": "model.layers.0.mlp.experts.down_proj_bias", "expert": None, "rows": [0, 2],
                                  "shape": [2, 64], "dtype": "BF16"}],
                     "chain": [{"name": "replicate", "n": 2}],
                     "ranks": [{"file": f"model-rank-{r}-part-0.safetensors", "dtype": "F32", "shape": [2, 64],
                                "xxh3_128": XXH} for r in range(2)]}],
        "shared": {"model.embed_tokens.weight": {"file": "shared-part-0.safetensors", "dtype": "BF16",
                                                 "shape": [8, 64], "xxh3_128": XXH}},
    }


def test_round_trip(tmp_path):
    m = Manifest(sample())
    path = m.save(tmp_path)
    assert path == tmp_path / MANIFEST_NAME
    assert Manifest.load(tmp_path).data == sample()
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]     # no temp file left
    assert m.rank_files(1) == ["model-rank-1-part-0.safetensors"]
    assert m.shared_files() == ["shared-part-0.safetensors"]


def _mutate(path: str, value):
    def f(d):
        keys = path.split("/")
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        last = keys[-1]
        if value is DELETE:
            del d[last]
        elif isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return f


DELETE = object()

BAD = [
    ("missing top key", _mutate("experts", DELETE), "experts is missing"),
    ("wrong type", _mutate("parallel/tp", "2"), "parallel.tp must be integer"),
    ("bool as int", _mutate("target/layout_version", True), "target.layout_version must be integer"),
    ("missing nested", _mutate("target/arch", DELETE), "target.arch is missing"),
    ("older schema", _mutate("moepack_manifest", 0), "schema 0 is not supported"),
    ("bad sha", _mutate("files/config.json/sha256", "xyz"), "files\\['config.json'\\].sha256 must be 64"),
    ("sha256 as tensor hash", _mutate("experts/0/ranks/1/xxh3_128", SHA),
     "experts\\[0\\].ranks\\[1\\].xxh3_128 must be 32 lowercase hex"),
    ("uppercase tensor hash", _mutate("shared/model.embed_tokens.weight/xxh3_128", XXH.upper()), "xxh3_128 must be 32"),
    ("tensor hash missing", _mutate("experts/0/ranks/0/xxh3_128", DELETE), "experts\\[0\\].ranks\\[0\\].xxh3_128 is missing"),
    ("dotdot file", lambda d: d["files"].__setitem__("../evil", {"rank": None, "size": 1, "sha256": SHA}),
     "'../evil' is not a plain name"),
    ("absolute file", lambda d: d["files"].__setitem__("/etc/passwd", {"rank": None, "size": 1, "sha256": SHA}),
     "'/etc/passwd' is not a plain name"),
    ("rank count", _mutate("parallel/world_size", 3), "world_size 3"),
    ("rank order", _mutate("parallel/ranks/1/rank", 0), "parallel.ranks\\[1\\].rank is 0"),
    ("tp rank", _mutate("parallel/ranks/1/tp_rank", 0), "do not match rank 1"),
    ("rank file unlisted", _mutate("parallel/ranks/0/files", ["nope.safetensors"]), "'nope.safetensors'"),
    ("expert file unlisted", _mutate("experts/0/ranks/1/file", "gone.safetensors"), "gone.safetensors"),
    ("expert file wrong rank", _mutate("experts/0/ranks/1/file", "model-rank-0-part-0.safetensors"),
     "belongs to rank 0, not 1"),
    ("expert rank entries", _mutate("experts/0/ranks", []), "0 rank entries"),
    ("shared file unlisted", _mutate("shared/model.embed_tokens.weight/file", "x.safetensors"), "x.safetensors"),
    ("shared in rank file", _mutate("shared/model.embed_tokens.weight/file", "model-rank-0-part-0.safetensors"),
     "is a rank file"),
    ("negative shape", _mutate("experts/0/logical_shape", [-1]), "logical_shape"),
    ("chain step", _mutate("experts/0/chain", [{"n": 2}]), "chain\\[0\\]"),
    ("per-rank I", _mutate("model/intermediate_per_rank", [1, 2, 3]), "intermediate_per_rank"),
    ("not an object", lambda d: d["experts"].__setitem__(0, 5), "experts\\[0\\] must be an object"),
]


@pytest.mark.parametrize("label,mutate,message", BAD, ids=[b[0] for b in BAD])
def test_validation_failures_name_the_key(label, mutate, message):
    d = copy.deepcopy(sample())
    mutate(d)
    with pytest.raises(ManifestError, match=message) as ei:
        Manifest(d).validate()
    assert ei.value.exit_code == 2 and "\n" not in str(ei.value)


def test_newer_schema_refused(tmp_path):
    d = sample()
    d["moepack_manifest"] = SCHEMA_VERSION + 1
    del d["experts"]                                   # a newer schema may look different: version wins
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(ManifestError, match=f"newer moepack \\(schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}\\)"):
        Manifest.load(tmp_path)


def test_version_1_manifest_refused_convert_again(tmp_path):
    """A schema-1 manifest (sha256 tensor records, as the previous moepack wrote) is refused by its version,
    in one line, before its records are looked at."""
    d = sample()
    d["moepack_manifest"] = 1
    for rec in [*d["experts"][0]["ranks"], *d["shared"].values()]:
        rec["sha256"] = SHA
        del rec["xxh3_128"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(ManifestError) as ei:
        Manifest.load(tmp_path)
    assert str(ei.value) == "manifest.json: schema version 1 was written by an older moepack; convert again"
    assert ei.value.exit_code == 2


def test_load_failures(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("[]")
    with pytest.raises(ManifestError, match="JSON object"):
        Manifest.load(tmp_path)


def test_manifest_symlink_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    Manifest(sample()).save(real)
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).symlink_to(real / MANIFEST_NAME)
    with pytest.raises(ManifestError, match="symlink"):
        Manifest.load(out)


def test_safe_member(tmp_path):
    (tmp_path / "ok.safetensors").write_bytes(b"")
    assert safe_member(tmp_path, "ok.safetensors") == tmp_path / "ok.safetensors"
    assert safe_member(tmp_path, "not-yet.safetensors") == tmp_path / "not-yet.safetensors"
    for bad in ["../x", "/etc/passwd", "a/b", "..", ".", "", None, 3, "a\\b", "a\0b"]:
        with pytest.raises(ManifestError):
            safe_member(tmp_path, bad)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"secret")
    (tmp_path / "link.safetensors").symlink_to(outside)
    with pytest.raises(ManifestError, match="symlink"):
        safe_member(tmp_path, "link.safetensors")
    outside.unlink()


def test_validate_with_root_checks_symlinks(tmp_path):
    (tmp_path / "config.json").symlink_to("/etc/hostname")
    with pytest.raises(ManifestError, match="config.json.*symlink"):
        Manifest(sample()).validate(tmp_path)


def _schema_required(schema: dict, node: dict, out: dict, where: str) -> None:
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    if node.get("type") == "object" and "required" in node:
        out[where] = set(node["required"])
    for k, sub in node.get("properties", {}).items():
        if isinstance(sub, dict):
            _schema_required(schema, sub, out, f"{where}.{k}" if where else k)
    if isinstance(node.get("items"), dict):
        _schema_required(schema, node["items"], out, f"{where}[]")
    if isinstance(node.get("additionalProperties"), dict):
        _schema_required(schema, node["additionalProperties"], out, f"{where}{{}}")


def test_schema_file_requires_what_validate_requires():
    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["properties"]["moepack_manifest"]["const"] == SCHEMA_VERSION
    found: dict[str, set] = {}
    _schema_required(schema, schema, found, "")
    for kind, keys in REQUIRED.items():
        assert found.get(kind) == set(keys), kind
