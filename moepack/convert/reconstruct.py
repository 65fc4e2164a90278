"""Rebuild every source expert tensor from a converted folder: gather each rank's stored tensor, invert the
manifest's chain, split the canonical tensor back into source tensors (exact; used by tests and verify).

    for source_name, tensor in reconstruct_experts(out, manifest): ...

Tensors are read with `safetensors.safe_open` only (never pickle); file names go through `safe_member`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from ..formats.assemble import split_canonical
from ..formats.model import CanonicalTensor, SourcePiece
from ..layouts.transform import Chain
from .manifest import Manifest, safe_member


def canonical_of(entry: dict) -> CanonicalTensor:
    """The CanonicalTensor a manifest `experts` entry describes (role, logical shape/dtype, source pieces)."""
    pieces = tuple(SourcePiece(s["name"], s["expert"], tuple(s["rows"]), tuple(s["shape"]), s["dtype"])
                   for s in entry["sources"])
    return CanonicalTensor(entry["role"], tuple(entry["logical_shape"]), entry["logical_dtype"], pieces)


class _Files:
    """Lazily opened safetensors handles of one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: dict[str, object] = {}

    def get(self, file: str, name: str) -> torch.Tensor:
        h = self._open.get(file)
        if h is None:
            from safetensors import safe_open
            h = self._open[file] = safe_open(str(safe_member(self.root, file)), framework="pt")
        return h.get_tensor(name)


def gather_parts(out: Path | str, entry: dict, files: _Files | None = None) -> list[torch.Tensor]:
    """The stored tensor of every rank for one manifest `experts` entry, in rank order."""
    files = files or _Files(Path(out))
    return [files.get(r["file"], entry["name"]) for r in entry["ranks"]]


def reconstruct_experts(out: Path | str, manifest: Manifest | dict | None = None
                        ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (source tensor name, tensor in its source dtype and torch shape) for every expert source tensor.
    One canonical tensor (all its ranks' parts) is in memory at a time."""
    out = Path(out)
    if manifest is None:
        manifest = Manifest.load(out)
    data = manifest.data if isinstance(manifest, Manifest) else manifest
    files = _Files(out)
    for entry in data["experts"]:
        chain = Chain.from_json(entry["chain"])
        canonical = chain.invert(gather_parts(out, entry, files))
        yield from split_canonical(canonical, canonical_of(entry)).items()


def read_shared(out: Path | str, manifest: Manifest | dict | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for every pass-through tensor of the folder."""
    out = Path(out)
    if manifest is None:
        manifest = Manifest.load(out)
    data = manifest.data if isinstance(manifest, Manifest) else manifest
    files = _Files(out)
    for name, rec in data["shared"].items():
        yield name, files.get(rec["file"], name)
