"""The Transform protocol: a transform is data (a name and parameters) plus two pure functions.

Two kinds of step make up a `Chain`:

- `Transform`: one tensor in, one tensor out. `invert(apply(x))` is `x`, bit for bit.
- `Partition`: one tensor in, `n` parts out (`split`), and back (`join`). `join(split(x))` is `x`.
  TP slices and EP expert selection are partitions; every part has the same shape (a partition
  pads its parts to a common size itself, so the offsets it slices at never depend on padding).

A `Chain` is an ordered tuple of steps. `Chain.apply(x)` returns one tensor per rank, in rank
order (nested partitions multiply: with ep=2 then tp=2, parts are [ep0tp0, ep0tp1, ep1tp0, ep1tp1]).
`Chain.invert(parts)` rebuilds x. Steps after the last partition are *rank-local*: `invert_local`
undoes only those, turning one rank's stored tensor back into that rank's logical slice (what the
CPU reference kernel reads).

Every step is a frozen dataclass registered under its `name`; `to_json()` gives
`{"name": ..., **params}`, and `step_from_json` / `Chain.from_json` rebuild an equal object.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import PlanError

_REGISTRY: dict[str, type] = {}


def register(cls):
    """Class decorator: make a step constructible from its JSON name."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise RuntimeError(f"transform name {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def _from_jsonable(field_type: Any, v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_from_jsonable(None, x) for x in v)
    return v


@dataclass(frozen=True)
class Step:
    name: ClassVar[str] = "step"

    def to_json(self) -> dict:
        d = {"name": self.name}
        for f in dataclasses.fields(self):
            d[f.name] = _jsonable(getattr(self, f.name))
        return d

    def describe(self) -> str:
        params = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{self.name}({params})"


@dataclass(frozen=True)
class Transform(Step):
    """One tensor in, one out. Subclasses implement apply and invert; both pure, bit-exact."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def invert(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def canonicalize(self, x: torch.Tensor) -> torch.Tensor:
        """What of x survives `invert(apply(x))`, bit for bit: x itself for every lossless step.

        A step that drops information (only `e4m3fn_to_e4m3fnuz`: -0 becomes +0) overrides this with an
        elementwise map, so it may be applied to a whole unpartitioned tensor (`Chain.canonicalize`)."""
        return x


@dataclass(frozen=True)
class Partition(Step):
    """One tensor in, `n` equally shaped parts out."""

    @property
    def n(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def step_from_json(d: dict) -> Step:
    d = dict(d)
    name = d.pop("name", None)
    cls = _REGISTRY.get(name)
    if cls is None:
        raise PlanError(f"unknown transform {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            kwargs[f.name] = _from_jsonable(f.type, d.pop(f.name))
    if d:
        raise PlanError(f"transform {name!r}: unknown parameters {sorted(d)}")
    return cls(**kwargs)


@dataclass(frozen=True)
class Chain:
    steps: tuple[Step, ...] = ()

    @property
    def num_parts(self) -> int:
        n = 1
        for s in self.steps:
            if isinstance(s, Partition):
                n *= s.n
        return n

    def _last_partition(self) -> int:
        idx = -1
        for i, s in enumerate(self.steps):
            if isinstance(s, Partition):
                idx = i
        return idx

    @property
    def local_steps(self) -> tuple[Transform, ...]:
        """The rank-local suffix: steps after the last partition."""
        return tuple(self.steps[self._last_partition() + 1:])  # type: ignore[return-value]

    def apply(self, x: torch.Tensor) -> list[torch.Tensor]:
        parts = [x]
        for s in self.steps:
            if isinstance(s, Partition):
                parts = [p for part in parts for p in s.split(part)]
            else:
                parts = [s.apply(p) for p in parts]
        return parts

    def invert(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if len(parts) != self.num_parts:
            raise ValueError(f"chain has {self.num_parts} parts, got {len(parts)}")
        parts = list(parts)
        for s in reversed(self.steps):
            if isinstance(s, Partition):
                k = s.n
                parts = [s.join(parts[i:i + k]) for i in range(0, len(parts), k)]
            else:
                parts = [s.invert(p) for p in parts]
        assert len(parts) == 1
        return parts[0]

    def invert_local(self, y: torch.Tensor) -> torch.Tensor:
        for s in reversed(self.local_steps):
            y = s.invert(y)
        return y

    def apply_local(self, y: torch.Tensor) -> torch.Tensor:
        for s in self.local_steps:
            y = s.apply(y)
        return y

    def canonicalize(self, x: torch.Tensor) -> torch.Tensor:
        """x as `invert(apply(x))` returns it: identical to x unless a step is lossy (fnuz -0 -> +0).
        Compare a source tensor with a rebuilt one through this."""
        for s in self.steps:
            if isinstance(s, Transform):
                x = s.canonicalize(x)
        return x

    def to_json(self) -> list[dict]:
        return [s.to_json() for s in self.steps]

    @classmethod
    def from_json(cls, data: list[dict]) -> "Chain":
        return cls(tuple(step_from_json(d) for d in data))

    def describe(self) -> str:
        return " -> ".join(s.describe() for s in self.steps) or "identity"
