"""Header reader, streamed hashing, bit comparison and the report, against independent references
(safetensors' own writer and loader, hashlib over byte slices of the file)."""
from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
import xxhash
from rich.console import Console
from safetensors.torch import save_file

import moepack.hashing
from moepack.verify import hashing
from moepack.source.header import HeaderError, read_header
from moepack.verify.report import FAIL, OK, SKIP, Report, render_report
from moepack.verify.tensors import first_difference


def _tensors():
    g = torch.Generator().manual_seed(1)
    return {
        "a": torch.randint(0, 256, (3, 37), dtype=torch.uint8, generator=g),
        "b": torch.randn(5, 11, generator=g).to(torch.bfloat16),
        "c": torch.randn(7, generator=g),
        "d": torch.randn(4, 16, generator=g).to(torch.float8_e4m3fn),
        "e": torch.zeros(0, 3),
    }


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def test_header_offsets_point_at_each_tensors_bytes(tmp_path):
    ts = _tensors()
    path = tmp_path / "x.safetensors"
    save_file(ts, str(path))
    data = path.read_bytes()
    h = read_header(path)
    assert set(h.tensors) == set(ts) and h.file_size == len(data)
    want_dtype = {"a": "U8", "b": "BF16", "c": "F32", "d": "F8_E4M3", "e": "F32"}
    for name, t in ts.items():
        e = h.tensors[name]
        assert e.dtype == want_dtype[name] and e.shape == tuple(t.shape)
        assert data[e.begin:e.end] == _raw(t)
        assert not h.past_end(name)


@pytest.mark.parametrize("chunk", [5, 64, 1 << 20])
def test_streamed_hashes_equal_independent_hashes_of_slices(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(moepack.hashing, "CHUNK", chunk)     # where hash_file lives (verify.hashing re-exports it)
    ts = _tensors()
    path = tmp_path / "x.safetensors"
    save_file(ts, str(path))
    h = read_header(path)
    seen = []
    d = hashing.hash_file(path, {n: (e.begin, e.end) for n, e in h.tensors.items()}, on_bytes=seen.append)
    assert d.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and sum(seen) == d.size
    for name, t in ts.items():
        assert d.tensors[name] == xxhash.xxh3_128(_raw(t)).hexdigest(), name
    many = hashing.hash_files([(str(path), {}), (str(path), {"c": (h.tensors["c"].begin, h.tensors["c"].end)})], 2)
    assert many[0].sha256 == many[1].sha256 == d.sha256 and many[1].tensors == {"c": d.tensors["c"]}


def test_truncated_file_names_the_lost_tensors(tmp_path):
    ts = _tensors()
    path = tmp_path / "x.safetensors"
    save_file(ts, str(path))
    h0 = read_header(path)
    last = max(h0.tensors, key=lambda n: h0.tensors[n].end if h0.tensors[n].nbytes else -1)
    cut = h0.tensors[last].end - 1
    path.write_bytes(path.read_bytes()[:cut])
    h = read_header(path)
    assert h.past_end(last)
    assert [n for n in ts if h.past_end(n)] == [last]
    d = hashing.hash_file(path, {n: (e.begin, e.end) for n, e in h.tensors.items()})
    assert last not in d.tensors and len(d.tensors) == len(ts) - 1


def _write_header(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("header, data, message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 6, "overlap"),
    ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0", "unknown dtype"),
    ({"a": {"shape": [1]}}, b"", "lacks"),
])
def test_malformed_headers_are_refused(tmp_path, header, data, message):
    path = tmp_path / "bad.safetensors"
    _write_header(path, header, data)
    with pytest.raises(HeaderError, match=message):
        read_header(path)


def test_header_length_past_the_file_and_garbage(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(HeaderError, match="does not fit"):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{]")
    with pytest.raises(HeaderError, match="not JSON"):
        read_header(path)
    path.write_bytes(b"abc")
    with pytest.raises(HeaderError, match="shorter"):
        read_header(path)


def test_first_difference_compares_bits_and_names_the_index():
    a = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    b = a.clone()
    assert first_difference(a, b) is None
    b[1, 2, 3] = -1.0
    b[1, 2, 1] = 7.5
    assert first_difference(b, a).startswith("2 of 24 elements differ; first at [1, 2, 1]: 7.5, expected 21")
    z = torch.zeros(3)
    assert "differ" in first_difference(-z, z)           # -0.0 and 0.0 have different bits
    assert "dtype" in first_difference(a.to(torch.float64), a)
    assert "shape" in first_difference(a.reshape(6, 4), a)


@pytest.mark.parametrize("nbytes, offset", [(64, 0), (64, 1), (61, 0), (8, 3), (1, 0), (4096 + 8, 5)])
def test_first_difference_sees_every_byte_whatever_the_alignment(nbytes, offset):
    """The word-wise fast path (int64 where size and addresses allow) and the fallback agree with a
    byte-by-byte reference: a single flipped byte anywhere is found, including unaligned views."""
    base = torch.randint(0, 256, (nbytes + 8,), dtype=torch.uint8, generator=torch.Generator().manual_seed(nbytes))
    a = base[offset:offset + nbytes]
    for pos in sorted({0, nbytes // 2, nbytes - 1}):
        b = a.clone()
        b[pos] ^= 0x10
        assert first_difference(a, b) == f"1 of {nbytes} elements differ; first at [{pos}]: {int(a[pos])}, expected {int(b[pos])}"
    assert first_difference(a, a.clone()) is None


def test_report_verdict_json_and_rendering():
    r = Report(out="o", level="full")
    r.add("t.w", "tensor-hash", OK, "abc", rank=0)
    r.add("t.b", "header", SKIP, "file failed")
    assert r.ok and r.exit_code == 0 and r.verdict.startswith("PASS: 1 checks ok, 1 skipped")
    r.add("t.w", "padding", FAIL, "rank 1 pad", rank=1)
    assert not r.ok and r.exit_code == 3
    assert "padding of t.w rank 1" in r.verdict and r.failed("t.w", "padding")
    j = json.loads(json.dumps(r.to_json()))
    assert j["ok"] is False and j["counts"] == {"ok": 1, "skip": 1, "FAIL": 1} and len(j["rows"]) == 3
    with pytest.raises(ValueError):
        r.add("x", "no-such-check", OK)
    console = Console(record=True, width=200)
    render_report(r, console)
    text = console.export_text()
    assert "padding" in text and "t.w" in text and "FAIL:" in text
    from moepack.errors import VerificationError
    with pytest.raises(VerificationError, match="t.w"):
        r.raise_for_failure()
