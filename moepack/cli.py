"""`moepack` command line: parses flags, calls the Python API, prints. No logic lives here.

Errors: every `MoepackError` is printed as one line `error: ...` on stderr and the process exits
with the error's code (2 bad input, 3 verification failed, 4 environment). `--debug` shows the
traceback instead.
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .errors import MoepackError

_STATE = {"debug": False}

app = typer.Typer(
    name="moepack",
    help=(
        "Convert Mixture-of-Experts checkpoints ONCE, offline and verified, into the per-rank kernel layout "
        "a serving backend wants (padding, TP/EP sharding, gate/up de-interleave, weight and scale shuffles).\n\n"
        "Typical session:\n\n"
        "  moepack example gpt-oss ./ckpt                      # a tiny gpt-oss-shaped MXFP4 checkpoint\n\n"
        "  moepack inspect ./ckpt --tp 2 --backend aiter --hardware mi355x\n\n"
        "  moepack convert ./ckpt ./out --backend aiter --hardware mi355x --tp 2\n\n"
        "  moepack verify ./out --source ./ckpt --level numeric\n\n"
        "  moepack run ./out --tokens 16\n\n"
        "Exit codes: 0 ok, 2 bad input, 3 verification failed, 4 environment (disk full, permission, lock)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


class Level(str, Enum):
    quick = "quick"
    full = "full"
    numeric = "numeric"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"moepack {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_version),
):
    _STATE["debug"] = debug


@app.command()
def example(
    name: str = typer.Argument(..., help="Format: gpt-oss, deepseek-v3, qwen3-moe, nemotron-h, deepseek-v4."),
    out: Path = typer.Argument(..., help="Folder to write the checkpoint into (must not exist or be empty)."),
    size: str = typer.Option("tiny", "--size", help="tiny | small | a real-model-shaped size, e.g. gpt-oss-20b."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same bytes."),
):
    """Write a format-exact example checkpoint (random but valid values, real tensor names and config keys).

    Example: moepack example qwen3-moe ./qwen-tiny --size small
    """
    from .example import write_example

    path = write_example(name, out, size=size, seed=seed)
    _console().print(f"wrote [bold]{name}[/] ({size}) example to {path}")


@app.command()
def inspect(
    src: str = typer.Argument(..., help="Checkpoint folder or Hugging Face repo id."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel ranks to plan for."),
    ep: int = typer.Option(1, "--ep", help="Expert-parallel groups (must divide --tp and E)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="triton | aiter | flashinfer-cutlass."),
    hardware: Optional[str] = typer.Option(None, "--hardware", help="h100 | h200 | b200 | mi300x | mi325x | mi355x."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Layout variant where a target has several (see `moepack targets`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
):
    """Describe a checkpoint's MoE layers and, with a target, the plan per rank (padding, warnings).

    Example: moepack inspect ./ckpt --tp 8 --backend flashinfer-cutlass --hardware h100
    """
    from .inspect import inspect as run_inspect
    from .render import render_inspect

    info = run_inspect(src, revision=revision, tp=tp, ep=ep, backend=backend, hardware=hardware, variant=variant)
    if as_json:
        _print_json(info)
    else:
        render_inspect(info, _console())


@app.command()
def targets(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """List every supported (backend, hardware, quant) target and its transform chain.

    Example: moepack targets --json
    """
    from .layouts.targets import describe_targets
    from .render import render_targets

    rows = describe_targets()
    if as_json:
        _print_json(rows)
    else:
        render_targets(rows, _console())


@app.command()
def convert(
    src: str = typer.Argument(..., help="Checkpoint folder or Hugging Face repo id."),
    out: Path = typer.Argument(..., help="Output folder (refused if non-empty, unless --resume or --overwrite)."),
    backend: str = typer.Option(..., "--backend", help="triton | aiter | flashinfer-cutlass."),
    hardware: str = typer.Option(..., "--hardware", help="h100 | h200 | b200 | mi300x | mi325x | mi355x."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel ranks (world size)."),
    ep: int = typer.Option(1, "--ep", help="Expert-parallel groups; must divide --tp and E."),
    workers: int = typer.Option(1, "--workers", help="Processes converting layers in parallel."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision when SRC is a repo id."),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest part file, e.g. 5GB, 500MB."),
    resume: bool = typer.Option(False, "--resume", help="Keep finished parts whose hashes match; redo the rest."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder's contents."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and write nothing."),
    device: Device = typer.Option(Device.cpu, "--device", help="Where transforms run."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (or dry-run plan) as JSON."),
):
    """Convert a checkpoint into per-rank shards in a backend's kernel layout, plus manifest.json (written last).

    Example: moepack convert ./ckpt ./out --backend aiter --hardware mi355x --tp 4
    """
    if resume and overwrite:
        from .errors import BadInputError

        raise BadInputError("--resume and --overwrite exclude each other")
    from .convert.run import convert as run_convert
    from .render import render_summary

    result = run_convert(
        src, out, backend=backend, hardware=hardware, tp=tp, ep=ep, workers=workers, revision=revision,
        max_shard_size=max_shard_size, resume=resume, overwrite=overwrite, dry_run=dry_run,
        device=device.value, progress=progress,
    )
    if as_json:
        _print_json(result)
    else:
        render_summary(result, _console())


@app.command()
def verify(
    out: Path = typer.Argument(..., help="A converted folder (holds manifest.json)."),
    source: Optional[str] = typer.Option(None, "--source", help="The source checkpoint, to prove bit-exact reconstruction."),
    level: Level = typer.Option(Level.full, "--level", help="quick: files/headers; full: +hashes (+reconstruction with --source); numeric: +MoE numerics."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every row of every check, passing ones too."),
):
    """Prove a converted folder before deploying it. Exit 0 only if every check passes, 3 if one fails.

    Example: moepack verify ./out --source ./ckpt --level numeric
    """
    from .verify import render_report, verify as run_verify

    report = run_verify(out, source=source, level=level.value, progress=not as_json)
    if as_json:
        _print_json(report.to_json())
    else:
        render_report(report, _console(), verbose=verbose)
    if not report.ok:
        sys.stderr.write(f"error: {' '.join(report.verdict.split())}\n")
        raise typer.Exit(3)


@app.command()
def run(
    out: Path = typer.Argument(..., help="A converted folder."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Run one rank only (default: every rank, summed)."),
    tokens: int = typer.Option(8, "--tokens", help="Random tokens per MoE layer."),
    device: Device = typer.Option(Device.cpu, "--device", help="cpu (reference kernel) or cuda (Triton kernels)."),
    seed: int = typer.Option(0, "--seed", help="Random seed for the tokens."),
):
    """Smoke-test the runtime: load, run every MoE layer on random tokens, print time and error vs the reference.

    Example: moepack run ./out --tokens 32
    """
    from .render import render_smoke
    from .runtime.smoke import run_smoke

    rows = run_smoke(out, rank=rank, tokens=tokens, device=device.value, seed=seed)
    render_smoke(rows, _console())


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Usage-error and abort classes: click's, and the copies typer >= 0.16 vendors."""
    import click

    usage, abort = [click.exceptions.UsageError], [click.exceptions.Abort]
    try:
        from typer._click import exceptions as vendored  # typer's private copy of click
    except ImportError:  # older typer: plain click
        vendored = None
    if vendored is not None:
        usage.append(vendored.UsageError)
        abort.append(typer.Abort)
    return tuple(usage), tuple(abort)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: one-line errors with documented exit codes."""
    if argv is not None:
        sys.argv = ["moepack", *argv]
    usage_errors, aborts = _click_exception_types()
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except usage_errors as exc:   # unparsable flag, missing argument: one line, exit 2
        if _STATE["debug"]:
            raise
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:   # bare `moepack`: the help
            sys.stdout.write(ctx.get_help() + "\n")
            sys.exit(0)
        cmd = ctx.command_path if ctx is not None else "moepack"
        msg = " ".join(exc.format_message().split())
        sys.stderr.write(f"error: {msg} (see `{cmd} --help`)\n")
        sys.exit(2)
    except aborts:
        sys.stderr.write("error: aborted\n")
        sys.exit(130)
    except MoepackError as exc:
        if _STATE["debug"]:
            raise
        msg = " ".join(str(exc).split())
        sys.stderr.write(f"error: {msg}\n")
        sys.exit(exc.exit_code)
    except OSError as exc:  # an environment failure no module translated: still one line, exit 4
        if _STATE["debug"]:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        sys.stderr.write(f"error: {where}{exc.strerror or exc}\n")
        sys.exit(4)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, and how to see more
        if _STATE["debug"]:
            raise
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        sys.stderr.write(f"error: internal error: {msg} (rerun with --debug for the traceback)\n")
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
