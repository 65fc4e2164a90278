"""Load one rank of a converted folder: validate the manifest, memory-map the rank's files, build MoE layers.

`load(out, rank, device, check, allow_emulation) -> RankCheckpoint`. Order of checks, all before any
tensor is used (each failure is a `MoepackError` naming the file / tensor / flag):

1. `Manifest.load`: `OUT/manifest.json` exists, is JSON of a schema version this build reads (a newer
   one -> `ManifestError`: upgrade; an older one: convert again), well formed, and names only plain files inside OUT;
2. the writing tool is not a newer incompatible moepack, the target's layout version is known;
3. `rank` is in `[0, world_size)` (else `TargetMismatchError` naming the range);
4. the target fits the device (`check_device`): AITER layouts need ROCm, flashinfer layouts a CUDA
   device of the recorded arch; with `allow_emulation=True` they run through the reference instead;
5. every file the rank needs is inside OUT (no `..`, no absolute path, no symlink leading out: refused
   and never opened) and has the recorded size (else `VerificationError`);
6. each tensor's safetensors header entry matches the manifest's dtype and shape (else `VerificationError`);
   `check="full"` also compares the tensor hash (`moepack.hashing`, xxh3_128) of every tensor's raw bytes
   (in threads, one per tensor).

Only safetensors headers (JSON) and `safe_open` (memory-mapped, never pickle) read the files. On CPU the
tensors stay memory-mapped; on a GPU only this rank's files and the shared tensors are copied over.
"""
from __future__ import annotations

import mmap
import operator
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..convert.manifest import MANIFEST_NAME, Manifest, safe_member
from ..errors import BadInputError, EnvironmentError_, ManifestError, TargetMismatchError, VerificationError
from ..hashing import TENSOR_HASH, tensor_hasher
from ..layouts.transform import Chain
from ..source.header import Header, HeaderError, read_header
from .moe import Execution, MoELayer

CHECKS = ("fast", "full")
_HASH_STEP = 64 * 2**20
LAYOUT_VERSION = 1                   # the layout version of every target unless the registry says otherwise


@dataclass(frozen=True)
class TensorRecord:
    """What the manifest promises about one stored tensor of this rank."""

    name: str
    file: str
    dtype: str                 # safetensors header dtype string, e.g. "U8", "F8_E4M3"
    shape: tuple[int, ...]
    content_hash: str          # the tensor hash (`moepack.hashing`) of its raw bytes


@dataclass
class RankCheckpoint:
    """One rank of a converted folder, ready to run.

    `tensors`: name -> tensor, this rank's expert tensors (stored kernel layout) and every shared
    (non-expert) tensor. `moe_layers`: layer index -> `MoELayer` producing this rank's partial output.
    """

    root: Path
    manifest: dict
    rank: int
    ep_rank: int
    tp_rank: int
    experts: tuple[int, ...]           # global expert ids this rank owns
    device: torch.device
    execution: Execution
    tensors: dict[str, torch.Tensor] = field(repr=False)
    moe_layers: dict[int, MoELayer] = field(repr=False)

    @property
    def world_size(self) -> int:
        return int(self.manifest["parallel"]["world_size"])


def load(out, rank: int = 0, device="cpu", check: str = "fast", allow_emulation: bool = False) -> RankCheckpoint:
    """Validate and load rank `rank` of the converted folder `out` onto `device` (see the module docstring)."""
    if check not in CHECKS:
        raise BadInputError(f"check must be one of {', '.join(CHECKS)}, got {check!r}")
    root = Path(out)
    manifest = Manifest.load(root).data        # schema version, structure, file names inside OUT
    check_compatible(manifest, root / MANIFEST_NAME)
    entry = rank_entry(manifest, rank)
    rank = int(entry["rank"])
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadInputError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N)") from None
    execution = check_device(manifest["target"], dev, allow_emulation)

    expert_records, chains = expert_records_of(manifest, rank)
    records = expert_records + shared_records_of(manifest)
    paths = checked_files(root, manifest, {r.file for r in records})
    headers = read_headers(paths)
    for r in records:
        check_header_entry(r, headers[r.file])
    if check == "full":
        verify_hashes(records, paths, headers)

    tensors = open_tensors(records, paths, dev)
    moe_layers = build_layers(manifest, entry, expert_records, chains, tensors, execution)
    return RankCheckpoint(
        root=root, manifest=manifest, rank=rank, ep_rank=int(entry["ep_rank"]), tp_rank=int(entry["tp_rank"]),
        experts=tuple(int(e) for e in entry["experts"]), device=dev, execution=execution,
        tensors=tensors, moe_layers=moe_layers,
    )


# --- device ---------------------------------------------------------------------------------------

def _device_arch(dev: torch.device) -> str:
    """'cpu', 'gfx942'-style for ROCm, 'sm90'-style for CUDA."""
    if dev.type != "cuda":
        return dev.type
    if not torch.cuda.is_available():
        raise EnvironmentError_(f"device {dev}: CUDA/ROCm is not available in this torch build or machine")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EnvironmentError_(f"device {dev}: only {torch.cuda.device_count()} GPU(s) visible")
    props = torch.cuda.get_device_properties(dev)
    if torch.version.hip is not None:
        return str(getattr(props, "gcnArchName", "gfx")).split(":")[0]
    return f"sm{props.major}{props.minor}"


def check_device(target: dict, dev: torch.device, allow_emulation: bool) -> Execution:
    """Which kernel path runs this target on `dev`; a layout made for other hardware -> TargetMismatchError.

    - triton: the Triton fused MoE on CUDA/ROCm, the float32 reference on CPU;
    - aiter: native only on ROCm of the recorded arch (gfx942 / gfx950);
    - flashinfer-cutlass: native only on CUDA of the recorded arch (sm90 = h100/h200, sm100 = b200);
    - with `allow_emulation=True` a mismatched AITER / flashinfer layout runs through the reference
      (rank-local chain inverted once), on any device.
    """
    backend, arch = target.get("backend"), target.get("arch")
    have = _device_arch(dev)
    if backend == "triton":
        if dev.type == "cuda":
            return Execution("triton", emulated=False)
        if dev.type == "cpu":
            return Execution("reference", emulated=False)
        raise TargetMismatchError(f"the triton layout runs on cuda or cpu, not on device {dev}")
    if backend == "aiter":
        native = dev.type == "cuda" and torch.version.hip is not None and have == arch
        kernel, needs = "aiter", f"a ROCm GPU of arch {arch}"
    elif backend == "flashinfer-cutlass":
        native = dev.type == "cuda" and torch.version.hip is None and have == arch
        kernel, needs = "flashinfer", f"a CUDA GPU of arch {arch}"
    else:
        raise ManifestError(f"manifest.json: unknown backend {backend!r} in target")
    if native:
        return Execution(kernel, emulated=False)
    if allow_emulation:
        return Execution("reference", emulated=True)
    raise TargetMismatchError(f"this folder holds the {backend}/{target.get('hardware')} layout, which needs {needs}; "
                              f"device {dev} is {have}. Reconvert for this device, or pass allow_emulation=True "
                              f"to run it through the reference")


# --- manifest ---------------------------------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for p in str(text).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_compatible(manifest: dict, path: Path) -> None:
    """The writing tool and the target's layout version are ones this build can read.

    (Schema version and structure are `Manifest.validate`'s job.)"""
    writer = manifest["tool"]["moepack"]
    ours, theirs = _version_tuple(__version__), _version_tuple(writer)
    # 0.x releases may change layouts between minors; from 1.0 the major version is the contract.
    if theirs[0] > ours[0] or (theirs[0] == ours[0] == 0 and theirs[:2] > ours[:2]):
        raise ManifestError(f"{path}: written by moepack {writer}, newer than this moepack {__version__}; upgrade moepack")
    check_layout_version(manifest["target"], path)


def check_layout_version(target: dict, path: Path) -> None:
    """The recorded target must be in this build's registry, with the same arch and layout version."""
    from ..errors import PlanError
    from ..layouts.targets import get_target

    name = f"{target['backend']}/{target['hardware']}/{target['quant']}"
    try:
        known = get_target(target["backend"], target["hardware"], target["quant"], target.get("variant"))
    except PlanError:
        raise ManifestError(f"{path}: target {name} is not one this moepack knows; reconvert") from None
    if target["arch"] != known.arch:
        raise ManifestError(f"{path}: target {name} records arch {target['arch']}, but {target['hardware']} is {known.arch}")
    current = getattr(known, "layout_version", LAYOUT_VERSION)
    if target["layout_version"] != current:
        raise ManifestError(f"{path}: target {name} has layout version {target['layout_version']}, this moepack "
                            f"writes and reads version {current}; reconvert or use a matching moepack")


def rank_entry(manifest: dict, rank: int) -> dict:
    """The manifest's `parallel.ranks` entry of `rank`; out of range -> TargetMismatchError naming the range."""
    par = manifest["parallel"]
    world = par["world_size"]
    try:
        rank = operator.index(rank)
    except TypeError:
        raise TargetMismatchError(f"rank must be an integer in 0..{world - 1}, got {rank!r}") from None
    if isinstance(rank, bool) or not 0 <= rank < world:
        raise TargetMismatchError(f"rank {rank!r} is out of range: this folder was converted for "
                                  f"world_size {world} (tp={par.get('tp')}, ep={par.get('ep')}), valid ranks 0..{world - 1}")
    return par["ranks"][rank]          # Manifest.validate: entry i is rank i


def expert_records_of(manifest: dict, rank: int) -> tuple[list[TensorRecord], dict[str, Chain]]:
    """This rank's stored expert tensors (manifest `experts[*].ranks[rank]`) and each one's chain."""
    records, chains = [], {}
    for ent in manifest["experts"]:
        name, r = ent["name"], ent["ranks"][rank]
        records.append(TensorRecord(name, r["file"], r["dtype"], tuple(r["shape"]), r[TENSOR_HASH]))
        try:
            chains[name] = Chain.from_json(ent["chain"])
        except Exception as e:   # unknown transform / parameters: a manifest this build cannot read
            raise ManifestError(f"manifest.json: tensor {name}: cannot read its transform chain ({e})") from None
        if chains[name].num_parts != manifest["parallel"]["world_size"]:
            raise ManifestError(f"manifest.json: tensor {name}: chain has {chains[name].num_parts} parts, "
                                f"world_size is {manifest['parallel']['world_size']}")
    return records, chains


def shared_records_of(manifest: dict) -> list[TensorRecord]:
    """Every non-expert tensor (manifest `shared`)."""
    return [TensorRecord(name, e["file"], e["dtype"], tuple(e["shape"]), e[TENSOR_HASH])
            for name, e in manifest["shared"].items()]


# --- files ------------------------------------------------------------------------------------------


def checked_files(root: Path, manifest: dict, names: set[str]) -> dict[str, Path]:
    """Each needed file name -> its path inside `root`, after the containment and size checks."""
    paths = {}
    for name in sorted(names):
        rec = manifest["files"][name]        # Manifest.validate: every tensor's file is listed
        path = safe_member(root, name)       # refuses '..', absolute names, links leading out of OUT
        if not path.is_file():
            raise VerificationError(f"{name}: missing from {root} (the folder is incomplete)")
        size = path.stat().st_size
        if size != rec["size"]:
            raise VerificationError(f"{name}: size {size} bytes, manifest records {rec['size']}")
        paths[name] = path
    return paths


def read_headers(paths: dict[str, Path]) -> dict[str, Header]:
    """Each file's safetensors header (verify's reader: JSON only, ranges checked, data never read)."""
    headers = {}
    for name, path in paths.items():
        try:
            headers[name] = read_header(path)
        except HeaderError as e:
            raise VerificationError(f"{name}: not a readable safetensors file ({e})") from None
    return headers


def check_header_entry(rec: TensorRecord, header: Header) -> None:
    """The file's header agrees with the manifest on the tensor's presence, dtype and shape."""
    h = header.tensors.get(rec.name)
    if h is None:
        raise VerificationError(f"{rec.file}: tensor {rec.name} is missing")
    if h.dtype != rec.dtype:
        raise VerificationError(f"{rec.file}: tensor {rec.name} has dtype {h.dtype}, manifest says {rec.dtype}")
    if h.shape != rec.shape:
        raise VerificationError(f"{rec.file}: tensor {rec.name} has shape {list(h.shape)}, "
                                f"manifest says {list(rec.shape)}")
    if header.past_end(rec.name):
        raise VerificationError(f"{rec.file}: tensor {rec.name} runs past the end of the file")


def _hash_span(path: Path, begin: int, end: int) -> str:
    """The tensor hash of bytes [begin, end) of `path`, read through a memory map in 64 MiB steps."""
    h = tensor_hasher()
    if end > begin:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                for lo in range(begin, end, _HASH_STEP):
                    h.update(view[lo:min(end, lo + _HASH_STEP)])
            finally:
                view.release()
    return h.hexdigest()


def verify_hashes(records: list[TensorRecord], paths: dict[str, Path], headers: dict[str, Header]) -> None:
    """The tensor hash of every used tensor's raw bytes against the manifest, one thread per tensor (xxhash
    releases the GIL; the largest tensor bounds the time). Header bytes are covered by parsing them and
    matching every dtype/shape/offset; whole-file hashes are `moepack verify`'s job."""
    def digest(r: TensorRecord) -> str:
        t = headers[r.file].tensors[r.name]
        return _hash_span(paths[r.file], t.begin, t.end)

    order = sorted(records, key=lambda r: -headers[r.file].tensors[r.name].nbytes)     # big ones first
    with ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:
        for r, got in zip(order, pool.map(digest, order)):
            if got != r.content_hash:
                raise VerificationError(f"{r.file}: tensor {r.name} {TENSOR_HASH} {got[:16]}... "
                                        f"does not match the manifest's {r.content_hash[:16]}...")


def open_tensors(records: list[TensorRecord], paths: dict[str, Path], device: torch.device) -> dict[str, torch.Tensor]:
    """Open each file once with `safe_open` (memory-mapped, no pickle) and take the listed tensors: on CPU
    they stay mapped; on a GPU safetensors copies each listed tensor straight to the device."""
    from safetensors import safe_open

    by_file: dict[str, list[str]] = {}
    for r in records:
        by_file.setdefault(r.file, []).append(r.name)
    target = "cpu" if device.type == "cpu" else str(device)
    tensors = {}
    for file, names in by_file.items():
        with safe_open(str(paths[file]), framework="pt", device=target) as f:
            for name in names:
                tensors[name] = f.get_tensor(name)
    return tensors


# --- MoE layers -------------------------------------------------------------------------------------


def build_layers(manifest: dict, entry: dict, records: list[TensorRecord], chains: dict[str, Chain],
                 tensors: dict[str, torch.Tensor], execution: Execution) -> dict[int, MoELayer]:
    """One `MoELayer` per MoE layer of the manifest, over this rank's stored tensors."""
    by_layer: dict[int, dict[str, str]] = {}
    for ent in manifest["experts"]:
        by_layer.setdefault(int(ent["layer"]), {})[ent["role"]] = ent["name"]
    model = manifest["model"]
    layers = {}
    for layer in model["moe_layers"]:
        roles = by_layer.get(int(layer))
        if not roles:
            raise ManifestError(f"manifest.json: MoE layer {layer} has no expert tensors")
        layers[int(layer)] = MoELayer(
            layer=int(layer),
            stored={role: tensors[name] for role, name in roles.items()},
            chains={role: chains[name] for role, name in roles.items()},
            model=model,
            target=manifest["target"],
            experts=tuple(int(e) for e in entry["experts"]),
            tp_rank=int(entry["tp_rank"]),
            execution=execution,
        )
    return layers
