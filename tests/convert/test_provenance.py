"""SourceHasher: whatever bytes are fed, in whatever order, the digests equal hashlib over each whole file."""
import hashlib
import random

from hypothesis import given, settings, strategies as st

from moepack.convert.provenance import SourceHasher
from moepack.source.checkpoint import Checkpoint


def _checkpoint(tmp_path, sizes):
    """Random source files plus a stub with the three Checkpoint attributes SourceHasher reads."""
    class Stub:
        root = tmp_path
        files = []
        extra_files = []
    rng = random.Random(len(sizes))
    for i, n in enumerate(sizes):
        p = tmp_path / f"model-{i:05d}.safetensors"
        p.write_bytes(rng.randbytes(n))
        Stub.files.append(p)
    extra = tmp_path / "config.json"
    extra.write_bytes(b'{"a": 1}')
    Stub.extra_files.append(extra)
    return Stub


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5000), st.integers(0, 3000)), max_size=12))
def test_digests_equal_whole_file_sha256(tmp_path_factory, feeds):
    tmp = tmp_path_factory.mktemp("src")
    ckpt = _checkpoint(tmp, [4000, 1, 9000])
    h = SourceHasher(ckpt)
    for i, off, n in feeds:       # regions out of order, overlapping, past the end of a file
        data = ckpt.files[i].read_bytes()[off:off + n]
        h.feed(ckpt.files[i].name, off, data)
    got = {r["name"]: (r["size"], r["sha256"]) for r in h.result()}
    paths = sorted(ckpt.files + ckpt.extra_files, key=lambda p: p.name)
    assert list(got) == [p.name for p in paths]
    for p in paths:
        assert got[p.name] == (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())


def test_matches_checkpoint_provenance(tmp_path):
    from moepack.example import write_example
    src = tmp_path / "src"
    write_example("gpt-oss", src, size="tiny")
    ckpt = Checkpoint.open(src)
    h = SourceHasher(ckpt)
    f = ckpt.files[0]
    h.feed(f.name, 100, f.read_bytes()[100:300])
    assert h.result() == ckpt.provenance()
