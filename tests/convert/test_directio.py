"""DirectFile: whatever is written, the file holds exactly those bytes, and every write it issues in direct
mode obeys O_DIRECT's rules (offset, length and address aligned). The rules are checked by a stand-in for
os.pwrite on an ordinary descriptor, so the test runs the same on any file system."""
import errno
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from moepack.convert import directio as D


class StrictPwrite:
    """os.pwrite that refuses (EINVAL) a write breaking O_DIRECT's rules for (block, mem_align), like the
    kernel; records every accepted write as (offset, length, address)."""

    def __init__(self, block: int, mem_align: int) -> None:
        self.block, self.mem_align, self.calls = block, mem_align, []
        self.real = os.pwrite

    def __call__(self, fd, buf, offset):
        mv = memoryview(buf).cast("B")
        addr = D.address_of(mv)
        if offset % self.block or len(mv) % self.block or addr % self.mem_align:
            raise OSError(errno.EINVAL, "Invalid argument")
        self.calls.append((offset, len(mv), addr))
        return self.real(fd, mv, offset)


def _direct_file(path, monkeypatch, block=512, mem_align=512):
    strict = StrictPwrite(block, mem_align)
    monkeypatch.setattr(D.os, "pwrite", strict)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    return D.DirectFile(fd, direct=True), strict


def _write_all(f: D.DirectFile, pieces) -> bytes:
    for p in pieces:
        f.write(p)
    size = f.finish()
    f.close()
    return size


def _pieces(sizes, seed=0):
    """Buffers of the given sizes: big ones page-aligned tensors' memory, small ones bytes."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        v = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
        out.append(D.aligned_empty(n).copy_(v).numpy() if n >= 4096 else bytes(v.tolist()))
    return out


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 1, 7, 512, 4096, 5000, 1 << 18, (1 << 18) + 512, 3 << 20, 300_001]),
                      max_size=8),
       block=st.sampled_from([512, 4096]), seed=st.integers(0, 3))
def test_bytes_are_exact_and_every_direct_write_is_aligned(tmp_path_factory, sizes, block, seed):
    path = tmp_path_factory.mktemp("d") / "f"
    pieces = _pieces(sizes, seed)
    with pytest.MonkeyPatch.context() as mp:
        f, strict = _direct_file(path, mp, block=block, mem_align=block)
        assert f.direct and f.block == block
        size = _write_all(f, pieces)
    want = b"".join(bytes(memoryview(p).cast("B")) for p in pieces)
    assert size == len(want) == path.stat().st_size
    assert path.read_bytes() == want
    assert all(off % block == 0 and n % block == 0 for off, n, _ in strict.calls)


def test_aligned_big_buffer_is_written_from_the_callers_memory(tmp_path, monkeypatch):
    f, strict = _direct_file(tmp_path / "f", monkeypatch)
    head = bytes(range(256)) * 16                        # 4096 bytes: the next byte is block-aligned
    big = D.aligned_empty(4 << 20)
    big.view(torch.int32).copy_(torch.arange(1 << 20, dtype=torch.int32))
    big_addr = big.data_ptr()
    assert big_addr % 4096 == 0
    tail = b"xyz"
    _write_all(f, [head, big.numpy(), tail])
    assert any(addr == big_addr for _, _, addr in strict.calls), "the big buffer went through staging"
    assert (tmp_path / "f").read_bytes() == head + big.numpy().tobytes() + tail


def test_misaligned_position_goes_through_staging(tmp_path, monkeypatch):
    f, strict = _direct_file(tmp_path / "f", monkeypatch)
    big = D.aligned_empty(4 << 20).fill_(9)
    _write_all(f, [b"abc", big.numpy()])                  # 3 bytes ahead: the big buffer is not block-aligned
    assert not any(addr == big.data_ptr() for _, _, addr in strict.calls)
    assert (tmp_path / "f").read_bytes() == b"abc" + big.numpy().tobytes()


def test_probe_finds_the_larger_block(tmp_path, monkeypatch):
    f, _ = _direct_file(tmp_path / "f", monkeypatch, block=4096, mem_align=4096)
    assert (f.direct, f.block, f.mem_align) == (True, 4096, 4096)
    data = bytes(range(256)) * 40 + b"!"
    assert _write_all(f, [data]) == len(data)
    assert (tmp_path / "f").read_bytes() == data


def test_no_direct_alignment_falls_back_to_plain_writes(tmp_path, monkeypatch):
    f, _ = _direct_file(tmp_path / "f", monkeypatch, block=1 << 30, mem_align=1)
    assert not f.direct and f.block == 1
    monkeypatch.undo()
    pieces = _pieces([10, 5000, 1 << 18])
    _write_all(f, pieces)
    assert (tmp_path / "f").read_bytes() == b"".join(bytes(memoryview(p).cast("B")) for p in pieces)


def test_alignment_refused_later_switches_to_staging(tmp_path, monkeypatch):
    """The probe saw 512-byte memory alignment work; a later write at such an address is refused (the device
    wants pages): the bytes are staged instead and the file is still exact."""
    f, strict = _direct_file(tmp_path / "f", monkeypatch)
    strict.mem_align = 4096
    buf = torch.zeros((1 << 20) + 512, dtype=torch.uint8)
    buf[512:] = torch.arange(1 << 20, dtype=torch.int64).to(torch.uint8)
    view = buf[512:].numpy()                               # 512-aligned, not page-aligned
    _write_all(f, [view])
    assert (tmp_path / "f").read_bytes() == view.tobytes()


@pytest.mark.parametrize("direct", [True, False])
def test_real_file(tmp_path, direct):
    """On this machine's file system, with the real os.pwrite (direct is True only where O_DIRECT works)."""
    f = D.DirectFile.create(tmp_path / "f", direct=direct)
    if not direct:
        assert not f.direct
    pieces = _pieces([4096, 3 << 20, 17, 1 << 18, 100_000])
    _write_all(f, pieces)
    assert (tmp_path / "f").read_bytes() == b"".join(bytes(memoryview(p).cast("B")) for p in pieces)


def test_create_refuses_an_existing_file(tmp_path):
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        D.DirectFile.create(tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == b"old"
