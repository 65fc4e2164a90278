"""The command line: every command explains itself with an example; errors are one line with an exit code."""
import json
import subprocess
import sys

import pytest

from moepack.cli import main

COMMANDS = ["example", "inspect", "targets", "convert", "verify", "run"]


def _run(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_top_level_help_lists_every_command_and_a_session(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    for c in COMMANDS:
        assert c in out
    assert "moepack convert" in out and "Exit codes" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_has_an_example(capsys, command):
    code, out, _ = _run(capsys, command, "--help")
    assert code == 0
    assert "Example:" in out and f"moepack {command}" in out


def test_version(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.startswith("moepack ")


def test_missing_source_folder_is_one_line_exit_2(capsys, tmp_path):
    code, out, err = _run(capsys, "inspect", str(tmp_path / "nope"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err


def test_unsupported_target_lists_the_supported_ones(capsys, example_ckpt):
    src = example_ckpt("gpt-oss")
    code, _, err = _run(capsys, "inspect", str(src), "--backend", "flashinfer-cutlass", "--hardware", "h100")
    assert code == 2 and err.count("\n") == 1
    assert "flashinfer-cutlass" in err and "supported for mxfp4" in err and "aiter: mi355x" in err


def test_tp_without_target_is_refused(capsys, example_ckpt):
    code, _, err = _run(capsys, "inspect", str(example_ckpt("gpt-oss")), "--tp", "2")
    assert code == 2 and "--backend" in err


def test_inspect_json_plan_for_qwen3_at_tp2_is_block_aligned(capsys, example_ckpt):
    code, out, _ = _run(capsys, "inspect", str(example_ckpt("qwen3-moe")), "--tp", "2", "--backend", "triton",
                        "--hardware", "h100", "--json")
    assert code in (0, None)
    info = json.loads(out)
    assert info["model"]["intermediate"] == 384
    plan = info["plan"]
    # 384 / 2 = 192 rows per rank; the block-aligned layout stores 2 blocks of 128 per half
    assert plan["intermediate_per_rank"] == [192, 192] and plan["intermediate_padded"] == 256
    assert [r["experts"] for r in plan["ranks"]] == [list(range(8))] * 2
    assert plan["chain_w13"].startswith("block_aligned_tp_slice")


def test_targets_json_lists_every_backend(capsys):
    code, out, _ = _run(capsys, "targets", "--json")
    rows = json.loads(out)
    assert {r["backend"] for r in rows} == {"triton", "aiter", "flashinfer-cutlass"}
    assert {r["hardware"] for r in rows} == {"h100", "h200", "b200", "mi300x", "mi325x", "mi355x"}
    assert all(r["chain"] for r in rows)


def test_debug_shows_the_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "moepack.cli", "--debug", "inspect", str(tmp_path / "nope")],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" in p.stderr
