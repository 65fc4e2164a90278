"""Typed errors. Every failure a user can cause is a `MoepackError` with an exit code.

The CLI prints `error: <message>` on one line and exits with `exit_code`; no traceback
unless `--debug`. Messages name the file / tensor / flag at fault.

| exit | class                 | meaning                                              |
| ---- | --------------------- | ---------------------------------------------------- |
| 2    | BadInputError (and subclasses SourceError, FormatError, PlanError, ManifestError) | the input is wrong |
| 3    | VerificationError     | a check of `verify` (or `load(check="full")`) failed |
| 4    | EnvironmentError_     | disk full, permission denied, lock held, no device   |
"""
from __future__ import annotations


class MoepackError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    exit_code = 2


class BadInputError(MoepackError):
    """The user's input (flags, checkpoint, folder) is wrong. Exit 2."""

    exit_code = 2


class SourceError(BadInputError):
    """The source checkpoint cannot be read: missing/truncated/corrupt file, bad header, offline and not cached."""


class FormatError(BadInputError):
    """The checkpoint is readable but not a format moepack knows, or its config contradicts its tensors."""


class PlanError(BadInputError):
    """The requested target / parallel layout is impossible for this model (tp, ep, alignment, unsupported target)."""


class ManifestError(BadInputError):
    """A converted folder's manifest is missing, malformed, of another schema, or names files outside the folder."""


class TargetMismatchError(BadInputError):
    """A converted folder was made for another target / rank / device than the one asked for."""


class VerificationError(MoepackError):
    """A verification check failed: the converted data does not match what the manifest promises. Exit 3."""

    exit_code = 3


class EnvironmentError_(MoepackError):
    """The environment stopped the work: disk full, permission denied, another convert holds the lock. Exit 4."""

    exit_code = 4


__all__ = [
    "MoepackError",
    "BadInputError",
    "SourceError",
    "FormatError",
    "PlanError",
    "ManifestError",
    "TargetMismatchError",
    "VerificationError",
    "EnvironmentError_",
]
