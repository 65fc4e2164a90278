"""Mutations of a converted folder: the seed bugs, written into real output the way a buggy converter
(or an attacker) would, with the manifest's hashes and sizes rewritten to match the mutated bytes so
that only verify's reconstruction / padding / numeric checks can catch them.

Every helper takes OUT (a copy of a conversion) and edits it in place.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import save_file

from moepack.layouts.generic import DeinterleaveGateUp
from moepack.layouts.transform import Chain
from moepack.source.checkpoint import Checkpoint
from moepack.verify.source_checks import load_chain
from moepack.formats.assemble import read_canonical
from moepack.verify.tensors import as_bits, canonical_tensor


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def save_manifest(out: Path, data: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(data, indent=1))


def entry(data: dict, layer: int, role: str) -> dict:
    return next(e for e in data["experts"] if e["layer"] == layer and e["role"] == role)


def _tensor_hash(t: torch.Tensor) -> str:
    return xxhash.xxh3_128(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def read_part(out: Path, e: dict, rank: int) -> torch.Tensor:
    with safe_open(str(out / e["ranks"][rank]["file"]), framework="pt") as f:
        return f.get_tensor(e["name"])


def _file_digest(raw: bytes) -> str:
    """A part file's manifest digest, computed here from its definition: sha256 of the header block
    followed by each tensor's raw xxh3_128 (16 bytes), in data-offset order."""
    n = int.from_bytes(raw[:8], "little")
    spans = sorted(v["data_offsets"] for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__")
    return hashlib.sha256(raw[:8 + n] + b"".join(xxhash.xxh3_128(raw[8 + n + b:8 + n + e]).digest()
                                                 for b, e in spans)).hexdigest()


def write_parts(out: Path, data: dict, e: dict, parts: dict[int, torch.Tensor], rehash: bool = True) -> None:
    """Replace entry `e`'s stored tensor on each rank in `parts`, rewriting its file (other tensors kept);
    with `rehash`, the manifest's tensor hash, file size and file hash follow the new bytes."""
    for rank, t in parts.items():
        rec = e["ranks"][rank]
        path = out / rec["file"]
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        tensors[e["name"]] = t.contiguous()
        save_file(tensors, str(path))
        if rehash:
            rec["xxh3_128"] = _tensor_hash(t)
            data["files"][rec["file"]]["size"] = path.stat().st_size
            data["files"][rec["file"]]["digest"] = _file_digest(path.read_bytes())
    save_manifest(out, data)


def source_canonical(src: Path, e: dict) -> torch.Tensor:
    ckpt = Checkpoint.open(src)
    return read_canonical(ckpt, canonical_tensor(e))


def flip_byte(out: Path, data: dict, e: dict, rank: int, offset: int = 3) -> None:
    """Mutation 1: one byte of the tensor's data flipped in place; the manifest is left alone."""
    from moepack.source.header import read_header

    path = out / e["ranks"][rank]["file"]
    begin = read_header(path).tensors[e["name"]].begin
    raw = bytearray(path.read_bytes())
    raw[begin + offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def swap_experts(out: Path, data: dict, e: dict, rank: int, a: int = 0, b: int = 1) -> None:
    """Mutation 2: experts a and b of one rank's stored tensor exchanged (dim 0 is experts)."""
    t = read_part(out, e, rank).clone()
    t[[a, b]] = t[[b, a]]
    write_parts(out, data, e, {rank: t})


def pad_positions(e: dict, rank: int) -> torch.Tensor:
    """Boolean mask of the stored part's elements the layout fills with padding (input-independent)."""
    chain = load_chain(e["chain"])
    dtype = getattr(torch, e["logical_dtype"])
    shape = tuple(e["logical_shape"])
    outs = []
    for byte in (0x11, 0x66):
        raw = torch.full((*shape[:-1], shape[-1] * torch.empty((), dtype=dtype).element_size()), byte, dtype=torch.uint8)
        outs.append(chain.apply(raw.view(dtype).reshape(shape))[rank])
    return as_bits(outs[0]) == as_bits(outs[1])


def poke_padding(out: Path, data: dict, e: dict, rank: int, value) -> list[int]:
    """Mutation 3: the last pad element of one rank's stored part set to `value`; returns its index."""
    t = read_part(out, e, rank).clone()
    mask = pad_positions(e, rank)
    assert bool(mask.any()), f"{e['name']} has no padding on rank {rank}"
    flat = int(torch.nonzero(mask.reshape(-1))[-1])
    t.reshape(-1)[flat] = value
    write_parts(out, data, e, {rank: t})
    return [int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(t.shape))]


def reconvert(out: Path, data: dict, e: dict, src: Path, chain: Chain) -> None:
    """Store what `chain` (a buggy variant of the entry's own) makes of the source canonical tensor."""
    parts = chain.apply(source_canonical(src, e))
    write_parts(out, data, e, dict(enumerate(parts)))


def deinterleave_twice(out: Path, data: dict, src: Path, roles=("w13_weight", "w13_weight_scale", "w13_bias")) -> None:
    """Mutation 4 (vLLM #42595): w13 rows de-interleaved once more than the source arrangement needs."""
    for e in data["experts"]:
        if e["role"] in roles:
            chain = load_chain(e["chain"])
            reconvert(out, data, e, src, Chain((DeinterleaveGateUp(1),) + chain.steps))


def padded_offset_slices(out: Path, data: dict, src: Path) -> None:
    """Mutation 5 (vLLM #42595): each TP partition takes its unpadded length at offset r * padded instead of
    the unpadded offset: rows between are never loaded, and ranks whose padded offset passes I hold zeros."""
    for e in data["experts"]:
        steps = load_chain(e["chain"]).steps
        k = next((i for i, s in enumerate(steps) if s.name == "tp_slice"), None)
        if k is None:
            continue
        tp = steps[k]
        x = Chain(steps[:k]).apply(source_canonical(src, e))[0]
        d = tp.dim % x.dim()
        parts = []
        for r, (a, b) in enumerate(tp.ranges()):
            halves = torch.chunk(x, tp.halves, dim=d)
            cut = []
            for h in halves:       # the unpadded length b - a, but at the padded offset r * padded
                start = min(r * tp.padded, h.shape[d])
                piece = h.narrow(d, start, min(b - a, h.shape[d] - start))
                pad_shape = list(piece.shape)
                pad_shape[d] = tp.padded - piece.shape[d]
                fill = torch.zeros(pad_shape, dtype=torch.uint8).view(piece.dtype) if piece.element_size() == 1 \
                    else torch.zeros(pad_shape, dtype=piece.dtype)
                cut.append(torch.cat([piece, fill], dim=d))
            parts.append(torch.cat(cut, dim=d))
        local = Chain(steps[k + 1:])
        write_parts(out, data, e, {r: local.apply(p)[0] for r, p in enumerate(parts)})


def separated_shuffles(out: Path, data: dict, src: Path) -> None:
    """Mutation 6 (SGLang #27201): the SEPARATED shuffles (shuffle_weight(16, 16), e8m0_shuffle) stored
    where the manifest's chain says INTERLEAVE (shuffle_weight_a16w4, shuffle_scale_a16w4)."""
    from moepack.layouts.aiter import AiterE8m0Shuffle, AiterShuffleWeight

    for e in data["experts"]:
        steps = load_chain(e["chain"]).steps
        if not any(s.name.endswith("a16w4") for s in steps):
            continue
        local_in = Chain(tuple(s for s in steps if not s.name.endswith("a16w4")))
        if e["role"].endswith("weight_scale"):
            shape = tuple(local_in.apply(torch.zeros(tuple(e["logical_shape"]), dtype=torch.uint8))[0].shape)
            swap = AiterE8m0Shuffle(shape, 127)
        else:
            swap = AiterShuffleWeight((16, 16), 1)
        reconvert(out, data, e, src, Chain(tuple(swap if s.name.endswith("a16w4") else s for s in steps)))


def scale_from_rank(out: Path, data: dict, e: dict, to_rank: int, from_rank: int) -> None:
    """Mutation 7: rank `to_rank` stores rank `from_rank`'s copy of a scale tensor."""
    write_parts(out, data, e, {to_rank: read_part(out, e, from_rank)})


def truncate(out: Path, file: str, by: int = 7) -> None:
    """Mutation 8: the file loses its last `by` bytes (a half-copied folder); manifest untouched."""
    path = out / file
    path.write_bytes(path.read_bytes()[:-by])


def change_dtype(out: Path, data: dict, e: dict, rank: int, dtype: torch.dtype) -> None:
    """Mutation 9: the tensor stored with another dtype (same bytes reinterpreted when sizes match)."""
    t = read_part(out, e, rank)
    t2 = t.view(dtype) if t.element_size() == torch.empty((), dtype=dtype).element_size() else t.to(dtype)
    write_parts(out, data, e, {rank: t2})
