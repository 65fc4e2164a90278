"""Resolve SRC (a local folder or a Hugging Face Hub repo id) to a local folder.

Hub ids go through `huggingface_hub.snapshot_download`, which honours HF_HOME / HF_HUB_CACHE and
HF_HUB_OFFLINE. The environment is read at call time (huggingface_hub reads it at import time),
so a test or a user may set it just before calling `resolve`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError

ALLOW_PATTERNS = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt"]
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class ResolvedSource:
    path: Path                 # local folder holding config.json and the safetensors files
    repo_id: str | None        # Hub repo id, None for a plain folder
    revision: str | None       # what the user asked for (branch, tag or commit)
    commit: str | None         # the commit hash of the snapshot, when known

    def to_json(self) -> dict:
        return {"path": str(self.path), "repo_id": self.repo_id, "revision": self.revision, "commit": self.commit}


def _hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _commit_of_snapshot(path: Path) -> str | None:
    """The commit hash when `path` is a Hub cache snapshot folder (`.../snapshots/<40 hex>`)."""
    if path.parent.name == "snapshots" and _COMMIT.match(path.name):
        return path.name
    return None


def _looks_like_path(src: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a folder."""
    return src.startswith((".", "/", "~")) or src.count("/") > 1


def resolve(src: str, revision: str | None = None) -> ResolvedSource:
    """A local folder as is; otherwise `src` is a Hub repo id downloaded (or found in the cache)."""
    local = Path(os.path.expanduser(str(src)))
    if local.is_dir():
        local = local.resolve()
        return ResolvedSource(local, None, revision, _commit_of_snapshot(local))
    if local.exists():
        raise SourceError(f"{src}: not a folder (SRC is a checkpoint folder or a Hub repo id)")
    if _looks_like_path(str(src)):
        raise SourceError(f"{src}: no such folder")
    return _download(str(src), revision)


def _download(repo_id: str, revision: str | None) -> ResolvedSource:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise SourceError(f"{repo_id}: huggingface_hub is not installed ({exc})") from None
    offline = _offline()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=ALLOW_PATTERNS,
            cache_dir=str(_hub_cache_dir()),
            local_files_only=offline,
        )
    except Exception as exc:  # every huggingface_hub failure becomes one line
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        at = f"@{revision}" if revision else ""
        if offline:
            raise SourceError(
                f"{repo_id}{at}: not a local folder and not in the Hub cache {_hub_cache_dir()} "
                f"(HF_HUB_OFFLINE is set): {type(exc).__name__}"
            ) from None
        raise SourceError(f"{repo_id}{at}: cannot download from the Hub: {type(exc).__name__}: {why}") from None
    path = Path(folder).resolve()
    return ResolvedSource(path, repo_id, revision, _commit_of_snapshot(Path(folder)) or _commit_of_snapshot(path))
