"""What every fault case asserts: a one-line error naming the culprit, the documented exit code, no
traceback, and no manifest left behind that `verify` or `load` would accept."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from moepack.cli import main
from moepack.errors import MoepackError

BAD_INPUT, VERIFY_FAILED, ENVIRONMENT = 2, 3, 4


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The single non-empty stderr line (asserted to be the only one)."""
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{self.err}"
        return lines[0]

    @property
    def verdict(self) -> str:
        """The last non-empty stdout line (`verify` prints its one-line verdict there)."""
        lines = [ln for ln in self.out.splitlines() if ln.strip()]
        assert lines, "verify printed nothing"
        return lines[-1]


def run_cli(capsys, monkeypatch, *args) -> CliResult:
    """`moepack ARGS` in this process; returns exit code and captured stdout / stderr."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))       # main() rewrites sys.argv
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    cap = capsys.readouterr()
    return CliResult(code, cap.out, cap.err)


def assert_refused(res: CliResult, exit_code: int, *names: str) -> str:
    """Exit `exit_code`, one `error: ...` line on stderr naming each of `names`, no traceback."""
    assert "Traceback" not in res.out + res.err, res.out + res.err
    assert res.code == exit_code, f"exit {res.code}, expected {exit_code}; stderr: {res.err}\nstdout: {res.out[-2000:]}"
    line = res.error_line
    assert line.startswith("error: "), line
    assert "internal error" not in line, line
    for n in names:
        assert n in line, f"{n!r} not named in: {line}"
    return line


def assert_verify_failed(res: CliResult, *names: str) -> str:
    """`verify` exit 3: its one-line verdict FAIL names each of `names`; no traceback."""
    assert "Traceback" not in res.out + res.err, res.out + res.err
    assert res.code == VERIFY_FAILED, f"exit {res.code}; stderr: {res.err}\nstdout: {res.out[-2000:]}"
    line = res.verdict
    assert line.startswith("FAIL"), line
    for n in names:
        assert n in line, f"{n!r} not named in: {line}"
    return line


def assert_nothing_accepted(out: Path) -> None:
    """No manifest in OUT, or one that neither `verify` (full) nor `load` (every rank) accepts."""
    out = Path(out)
    if not (out / "manifest.json").exists():
        return
    from moepack.runtime.loader import load
    from moepack.verify import verify

    try:
        report = verify(out, level="full", progress=False)
    except MoepackError:
        pass
    else:
        assert not report.ok, f"{out}: verify accepts a manifest left by a failed run"
    with pytest.raises(MoepackError):
        load(out, rank=0, check="full", allow_emulation=True)


def leftovers(out: Path) -> list[str]:
    """Temp files a failed or killed write left in OUT (moepack's `.NAME.tmp`)."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
