"""moepack: convert Mixture-of-Experts checkpoints once, offline and verified, into per-rank kernel layouts.

Public API (the CLI is a thin layer over these):
    moepack.convert(src, out, backend=..., hardware=..., tp=1, ep=1)  -> Manifest
    moepack.verify(out, source=None, level="full")                     -> Report
    moepack.load(out, rank=0, device="cpu")                            -> RankCheckpoint
    moepack.MoepackError                                               -> base of every error
"""
from __future__ import annotations

from .errors import MoepackError

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import moepack` stays cheap for serving code
    if name == "convert":
        from .convert.run import convert
        return convert
    if name == "verify":
        from .verify import verify
        return verify
    if name == "load":
        from .runtime.loader import load
        return load
    raise AttributeError(f"module 'moepack' has no attribute {name!r}")


__all__ = ["convert", "verify", "load", "MoepackError", "__version__"]
