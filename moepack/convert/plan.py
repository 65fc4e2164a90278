"""The conversion plan: every output tensor, the chain that makes it, and the part file it goes to.

Built from a `Checkpoint` + `ModelDescription` + `Target` + tp/ep, before any tensor data is read.

- Expert work is a list of *items* `(layer, role)` in layer order, then `ROLES` order. Every rank
  stores the same shape for an item (partitions pad parts to a common size), so the part split is the
  same for all ranks.
- *Units* are what one worker does at a time: a rank unit is a contiguous run of items (inside one
  layer group; cut at `max_shard_size` of one rank's bytes) and writes part p of every rank; a shared
  unit copies a run of pass-through tensors into `shared-part-{p}.safetensors`, byte for byte.
- `workers` > 1 cuts the MoE layers into that many contiguous groups of similar size, so each worker
  writes its own part files.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import PlanError
from ..formats.model import ROLES, CanonicalTensor, ModelDescription
from ..layouts.plan import LayerPlan, plan_layer, stored_shapes
from ..layouts.targets import Target
from ..layouts.transform import Chain
from ..source.checkpoint import Checkpoint
from .writer import TensorEntry, split_parts, st_dtype

LAYOUT_VERSION = 1


def expert_name(layer: int, role: str) -> str:
    """Name of an expert tensor in the rank files: model.layers.{l}.mlp.experts.{role}."""
    return f"model.layers.{layer}.mlp.experts.{role}"


def rank_part_name(rank: int, part: int) -> str:
    return f"model-rank-{rank}-part-{part}.safetensors"


def shared_part_name(part: int) -> str:
    return f"shared-part-{part}.safetensors"


@dataclass(frozen=True)
class ExpertItem:
    """One canonical tensor of one layer: its chain and what each rank stores ([shape] of safetensors dtype)."""

    layer: int
    role: str
    canonical: CanonicalTensor
    chain: Chain
    stored: TensorEntry            # the same name / dtype / shape on every rank

    @property
    def name(self) -> str:
        return self.stored.name


@dataclass(frozen=True)
class SharedSource:
    """A pass-through tensor and where its bytes lie in the source (absolute file offsets)."""

    entry: TensorEntry
    file: str                      # source file name (relative to the checkpoint root)
    start: int                     # absolute byte offset in that file


@dataclass(frozen=True)
class Unit:
    """One piece of work. Rank unit: `items`, writes `files[r]` for rank r. Shared unit: `shared`, one file."""

    index: int
    files: tuple[str, ...]
    items: tuple[ExpertItem, ...] = ()
    shared: tuple[SharedSource, ...] = ()
    source_stat: tuple[tuple[str, int, int], ...] = ()   # (file, size, mtime_ns) of the source files it reads

    @property
    def is_shared(self) -> bool:
        return bool(self.shared)

    @property
    def nbytes(self) -> int:
        """Tensor bytes written by this unit, over all its files."""
        if self.is_shared:
            return sum(s.entry.nbytes for s in self.shared)
        return sum(i.stored.nbytes for i in self.items) * len(self.files)

    def entries(self) -> list[TensorEntry]:
        return [s.entry for s in self.shared] if self.is_shared else [i.stored for i in self.items]

    def fingerprint(self) -> str:
        """sha256 of what this unit promises to write (names, dtypes, shapes, chains, sources, and the size and
        mtime of each source file it reads): a finished part is reused by --resume only when the new plan's
        fingerprint equals the recorded one, so a re-downloaded or edited source redoes the parts it feeds."""
        desc = {"files": list(self.files),
                "entries": [[e.name, e.dtype, list(e.shape), e.nbytes] for e in self.entries()],
                "chains": [i.chain.to_json() for i in self.items],
                "sources": [[p.name, p.expert, list(p.rows)] for i in self.items for p in i.canonical.pieces]
                + [[s.file, s.start] for s in self.shared],
                "source_stat": [list(x) for x in self.source_stat]}
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


@dataclass
class ConvertPlan:
    root: Path
    desc: ModelDescription
    target: Target
    tp: int
    ep: int
    layer_plans: dict[int, LayerPlan]
    items: list[ExpertItem]
    units: list[Unit]
    shared_names: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.tp

    @property
    def rank_units(self) -> list[Unit]:
        return [u for u in self.units if not u.is_shared]

    @property
    def shared_units(self) -> list[Unit]:
        return [u for u in self.units if u.is_shared]

    @property
    def nbytes(self) -> int:
        return sum(u.nbytes for u in self.units)

    def rank_files(self, rank: int) -> list[str]:
        return [u.files[rank] for u in self.rank_units]

    def file_rank(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for u in self.units:
            for r, f in enumerate(u.files):
                out[f] = None if u.is_shared else r
        return out

    def summary(self) -> dict:
        """JSON-able plan (what --dry-run returns under "parts"): the files and how much goes into each."""
        return {"world_size": self.world_size,
                "rank_parts": [{"part": u.index, "layers": sorted({i.layer for i in u.items}),
                                "tensors": len(u.items), "bytes_per_rank": u.nbytes // len(u.files)}
                               for u in self.rank_units],
                "shared_parts": [{"file": u.files[0], "tensors": len(u.shared), "bytes": u.nbytes}
                                 for u in self.shared_units],
                "bytes": self.nbytes, "warnings": list(self.warnings)}


def _layer_groups(layers: list[int], weights: dict[int, int], workers: int) -> list[list[int]]:
    """Cut `layers` into min(workers, len) contiguous groups of similar total weight."""
    n = max(1, min(workers, len(layers)))
    total = sum(weights[layer] for layer in layers) or 1
    groups: list[list[int]] = [[] for _ in range(n)]
    acc = 0
    for layer in layers:
        g = min(n - 1, acc * n // total)
        groups[g].append(layer)
        acc += weights[layer]
    return [g for g in groups if g]


def build_plan(ckpt: Checkpoint, desc: ModelDescription, target: Target, tp: int = 1, ep: int = 1,
               max_shard_bytes: int = 5 * 10**9, workers: int = 1) -> ConvertPlan:
    """Plan every layer (`plan_layer`), every stored tensor and every part file. PlanError if impossible."""
    if not desc.moe_layers:
        raise PlanError(f"{ckpt.root}: the model has no MoE layers to convert")
    if workers < 1:
        raise PlanError(f"--workers {workers} must be >= 1")
    layer_plans: dict[int, LayerPlan] = {}
    items: list[ExpertItem] = []
    warnings: list[str] = []
    for spec in desc.moe_layers:
        lp = layer_plans[spec.index] = plan_layer(spec, target, tp, ep)
        warnings += [w for w in lp.warnings if w not in warnings]
        shapes = stored_shapes(spec, lp)
        for role in ROLES:
            ct = spec.tensors.get(role)
            if ct is None:
                continue
            shape, dtype = shapes[role]
            n = 1
            for s in shape:
                n *= s
            entry = TensorEntry(expert_name(spec.index, role), st_dtype(dtype), tuple(shape),
                                n * torch.empty((), dtype=dtype).element_size())
            items.append(ExpertItem(spec.index, role, ct, lp.chains[role], entry))

    # pass-through: everything that is not an expert piece (a tensor no format claims is kept, not lost)
    pieces = {p.name for it in items for p in it.canonical.pieces}
    shared_names = list(dict.fromkeys(desc.passthrough))
    claimed = pieces | set(shared_names)
    extra = [n for n in ckpt.tensor_names() if n not in claimed]
    if extra:
        warnings.append(f"{len(extra)} source tensors belong to no MoE expert and were not listed as pass-through "
                        f"(e.g. {extra[0]}); copied unchanged into the shared parts")
        shared_names += extra
    overlap = pieces & set(shared_names)
    if overlap:
        raise PlanError(f"tensor {sorted(overlap)[0]} is both an expert piece and a pass-through tensor")

    stat = {}
    for f in ckpt.files:
        st = f.stat()
        stat[f.name] = (f.name, st.st_size, st.st_mtime_ns)

    def source_stat(names) -> tuple:
        return tuple(sorted({stat[ckpt.info(n).file] for n in names}))

    # rank units: layer groups, then size cuts
    weights = {spec.index: sum(i.stored.nbytes for i in items if i.layer == spec.index) for spec in desc.moe_layers}
    units: list[Unit] = []
    by_layer: dict[int, list[ExpertItem]] = {}
    for it in items:
        by_layer.setdefault(it.layer, []).append(it)
    for group in _layer_groups([s.index for s in desc.moe_layers], weights, workers):
        group_items = [it for layer in group for it in by_layer[layer]]
        index_of = {it.stored.name: it for it in group_items}
        for part in split_parts([it.stored for it in group_items], max_shard_bytes):
            p = len(units)
            chosen = tuple(index_of[e.name] for e in part)
            units.append(Unit(p, tuple(rank_part_name(r, p) for r in range(tp)), items=chosen,
                              source_stat=source_stat(pc.name for it in chosen for pc in it.canonical.pieces)))

    # shared units
    sources = {}
    for name in shared_names:
        info = ckpt.info(name)
        sources[name] = SharedSource(TensorEntry(name, info.dtype, tuple(info.shape), info.nbytes),
                                     info.file, info.file_offset)
    for sp, part in enumerate(split_parts([s.entry for s in sources.values()], max_shard_bytes)):
        units.append(Unit(len(units), (shared_part_name(sp),), shared=tuple(sources[e.name] for e in part),
                          source_stat=source_stat(e.name for e in part)))
    return ConvertPlan(Path(ckpt.root), desc, target, tp, ep, layer_plans, items, units, shared_names, warnings)
