"""Small checks the format modules share: config values and tensor dtype/shape expectations.

Every failure is a FormatError naming the config key or the tensor (and its file)."""
from __future__ import annotations

import re
from typing import Iterable

from ..errors import FormatError
from ..source.checkpoint import Checkpoint, TensorInfo
from .model import CanonicalTensor, Routing, SourcePiece


def cfg(config: dict, *keys: str, default=None, required: bool = True):
    """The first of `keys` present in config.json; FormatError when required and none is."""
    for k in keys:
        if k in config and config[k] is not None:
            return config[k]
    if required and default is None:
        raise FormatError(f"config.json: missing key {' / '.join(keys)}")
    return default


def cfg_int(config: dict, *keys: str, default: int | None = None) -> int:
    v = cfg(config, *keys, default=default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise FormatError(f"config.json: {keys[0]} must be a non-negative integer, got {v!r}")
    return v


def expect(ckpt: Checkpoint, name: str, dtypes: str | Iterable[str], shape: tuple[int, ...] | None,
           why: str = "") -> TensorInfo:
    """The tensor's header info, checked for dtype (one of `dtypes`) and header shape."""
    allowed = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    if name not in ckpt:
        raise FormatError(f"missing tensor {name} (expected {'/'.join(allowed)} {list(shape) if shape is not None else ''})")
    info = ckpt.info(name)
    if info.dtype not in allowed:
        raise FormatError(f"{info.file}: tensor {name} has dtype {info.dtype}, expected {' or '.join(allowed)}")
    if shape is not None and tuple(info.shape) != tuple(shape):
        raise FormatError(f"{info.file}: tensor {name} has shape {list(info.shape)}, expected {list(shape)}"
                          + (f" ({why})" if why else ""))
    return info


def layer_indices(names: Iterable[str], pattern: str) -> dict[int, set[str]]:
    """Tensor names matching `pattern` (a regex with a `(?P<layer>\\d+)` group), grouped by layer."""
    rx = re.compile(pattern)
    out: dict[int, set[str]] = {}
    for n in names:
        m = rx.match(n)
        if m:
            out.setdefault(int(m.group("layer")), set()).add(n)
    return out


def expert_ids(names: Iterable[str], pattern: str) -> set[int]:
    """Expert indices `(?P<expert>\\d+)` of the names matching `pattern`."""
    rx = re.compile(pattern)
    return {int(m.group("expert")) for n in names if (m := rx.match(n))}


def check_layers(found: set[int], from_config: set[int], what: str) -> None:
    """The MoE layers seen in tensor names must be the ones config.json implies."""
    if found != from_config:
        extra, missing = sorted(found - from_config), sorted(from_config - found)
        parts = []
        if missing:
            parts.append(f"config.json implies MoE layers {missing} but no {what} tensors exist there")
        if extra:
            parts.append(f"{what} tensors exist in layers {extra} that config.json does not make MoE layers")
        raise FormatError("; ".join(parts))


def check_experts(found: set[int], E: int, where: str, example: str) -> None:
    """Experts 0..E-1 must all be present (config says E)."""
    if found != set(range(E)):
        missing = sorted(set(range(E)) - found)
        extra = sorted(found - set(range(E)))
        if missing:
            raise FormatError(f"{where}: config.json says {E} experts but expert {missing[0]} is missing "
                              f"(no tensor {example.format(e=missing[0])}); {len(found)} experts present")
        raise FormatError(f"{where}: config.json says {E} experts but tensor {example.format(e=extra[0])} exists")


def fused_piece(info: TensorInfo, rows: tuple[int, int], storage_shape: tuple[int, ...]) -> SourcePiece:
    """A source tensor holding all experts (dim 0), at `rows` of dim 1."""
    return SourcePiece(info.name, None, rows, tuple(storage_shape), info.dtype)


def expert_piece(info: TensorInfo, e: int, rows: tuple[int, int]) -> SourcePiece:
    """A per-expert source tensor at expert `e`, `rows` of dim 1 (its torch storage shape)."""
    return SourcePiece(info.name, e, rows, info.torch_shape, info.dtype)


def canonical(role: str, shape: tuple[int, ...], dtype: str, pieces: list[SourcePiece]) -> CanonicalTensor:
    return CanonicalTensor(role, tuple(shape), dtype, tuple(pieces))


def passthrough(ckpt: Checkpoint, expert_names: set[str]) -> tuple[str, ...]:
    """Every tensor of the checkpoint not consumed by a canonical expert tensor, in checkpoint order."""
    return tuple(n for n in ckpt.tensor_names() if n not in expert_names)


def piece_names(layers) -> set[str]:
    return {p.name for spec in layers for ct in spec.tensors.values() for p in ct.pieces}


def sigmoid_noaux_routing(config: dict, top_k: int, router_weight: str, router_bias: str) -> Routing:
    """DeepSeek-style routing constants from config.json (n_group, topk_group, norm_topk_prob, scaling)."""
    return Routing("sigmoid_noaux", top_k,
                   norm_topk_prob=bool(cfg(config, "norm_topk_prob", default=False, required=False)),
                   n_group=cfg_int(config, "n_group", default=1), topk_group=cfg_int(config, "topk_group", default=1),
                   routed_scaling_factor=float(cfg(config, "routed_scaling_factor", default=1.0)),
                   router_weight=router_weight, router_bias=router_bias)
