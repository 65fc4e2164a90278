"""The verification report: one row per (tensor or file, check, rank), and a verdict.

A `Row` is `(subject, check, result, detail, rank)`: `subject` is a tensor name or a file name
relative to OUT, `check` one of `CHECKS`, `result` one of "ok", "FAIL", "skip". `rank` is the
output rank the row is about (None for whole-folder rows). The report passes only when no row failed.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

OK, FAIL, SKIP = "ok", "FAIL", "skip"

# Every check `verify` runs, in report order, with what it proves.
CHECKS = {
    "manifest": "manifest.json parses, has this moepack's schema version and is self-consistent",
    "file": "the file is present, a regular file, and inside OUT (no '..', absolute path or escaping symlink)",
    "size": "the file has the size the manifest records",
    "header": "the safetensors header parses and holds the tensor with in-range, consistent offsets",
    "dtype": "the header dtype equals the manifest's",
    "shape": "the header shape equals the manifest's",
    "file-hash": "the file's digest (part files: sha256 of header + tensor xxh3_128s, see convert.writer.part_digest) or sha256 (copied files) equals the manifest's",
    "tensor-hash": "xxh3_128 of the tensor's bytes equals the manifest's",
    "source-file": "the source file's size and sha256 equal the manifest's provenance",
    "plan": "the manifest's chains and source pieces are what moepack plans for this source and target",
    "reconstruct": "inverting the chain and gathering ranks gives the source tensor bit-exactly",
    "padding": "each stored part equals the chain re-applied to the reconstruction (pad values, replicas)",
    "numeric": "the layer run through the rank layout matches a float64 reference from the source",
}


@dataclass(frozen=True)
class Row:
    subject: str
    check: str
    result: str
    detail: str = ""
    rank: int | None = None


@dataclass
class Report:
    out: str
    level: str
    source: str | None = None
    rows: list[Row] = field(default_factory=list)

    def add(self, subject: str, check: str, result: str, detail: str = "", rank: int | None = None) -> Row:
        if check not in CHECKS:
            raise ValueError(f"unknown check {check!r}")
        if result not in (OK, FAIL, SKIP):
            raise ValueError(f"unknown result {result!r}")
        row = Row(subject, check, result, detail, rank)
        self.rows.append(row)
        return row

    def extend(self, rows) -> None:
        for r in rows:
            self.add(r.subject, r.check, r.result, r.detail, r.rank)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.result == FAIL]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        """0 when every check passed, 3 (VerificationError's code) otherwise."""
        return 0 if self.ok else 3

    def failed(self, subject: str | None = None, check: str | None = None) -> list[Row]:
        """Failed rows whose subject contains `subject` and whose check is `check` (None: any)."""
        return [r for r in self.failures
                if (subject is None or subject in r.subject) and (check is None or r.check == check)]

    @property
    def verdict(self) -> str:
        counts = Counter(r.result for r in self.rows)
        src = f", source {self.source}" if self.source else ""
        if self.ok:
            skipped = f", {counts[SKIP]} skipped" if counts[SKIP] else ""
            return f"PASS: {counts[OK]} checks ok{skipped} (level {self.level}{src})"
        first = self.failures[0]
        where = f"{first.subject}" + (f" rank {first.rank}" if first.rank is not None else "")
        return (f"FAIL: {counts[FAIL]} of {len(self.rows)} checks failed (level {self.level}{src}); "
                f"first: {first.check} of {where}: {first.detail}")

    def raise_for_failure(self) -> None:
        """Raise `VerificationError` (exit 3) naming the first failed check, if any."""
        if not self.ok:
            from ..errors import VerificationError

            raise VerificationError(self.verdict)

    def to_json(self) -> dict:
        return {
            "out": self.out,
            "level": self.level,
            "source": self.source,
            "ok": self.ok,
            "verdict": self.verdict,
            "counts": dict(Counter(r.result for r in self.rows)),
            "rows": [asdict(r) for r in self.rows],
        }


def render_report(report: Report, console, verbose: bool = False) -> None:
    """Print one summary row per check (passed / failed / skipped), then every failed row
    (tensor, check, rank, detail), then the one-line verdict. `verbose` adds one table per check
    with every row, passing ones included."""
    from rich.table import Table

    by_check: dict[str, list[Row]] = defaultdict(list)
    for r in report.rows:
        by_check[r.check].append(r)
    style = {OK: "green", FAIL: "bold red", SKIP: "yellow"}

    summary = Table(title=f"verify --level {report.level}", title_justify="left")
    for col in ("check", "what it proves", "ok", "failed", "skipped"):
        summary.add_column(col, overflow="fold")
    for check, what in CHECKS.items():
        rows = by_check.get(check)
        if not rows:
            continue
        n = {k: sum(r.result == k for r in rows) for k in (OK, FAIL, SKIP)}
        summary.add_row(check, what, f"[green]{n[OK]}[/]", f"[bold red]{n[FAIL]}[/]" if n[FAIL] else "0",
                        f"[yellow]{n[SKIP]}[/]" if n[SKIP] else "0")
    console.print(summary)

    def table(title: str, rows: list[Row]):
        t = Table(title=title, title_justify="left")
        for col in ("tensor / file", "check", "rank", "result", "detail"):
            t.add_column(col, overflow="fold")
        for r in rows:
            t.add_row(r.subject, r.check, "" if r.rank is None else str(r.rank),
                      f"[{style[r.result]}]{r.result}[/]", r.detail)
        console.print(t)

    if verbose:
        for check in CHECKS:
            if by_check.get(check):
                table(f"{check}: {CHECKS[check]}", by_check[check])
    else:
        failed = [r for r in report.rows if r.result == FAIL]
        if failed:
            table("failed checks", failed)
    colour = "green" if report.ok else "bold red"
    console.print(f"[{colour}]{report.verdict}[/]", markup=True, highlight=False)
