"""The README's Quickstart is the contract with a new user: exactly two commands, the second is what CI
runs, and the first one's main job (example -> convert -> verify) works."""
import re
import shlex
from pathlib import Path

import pytest

from moepack.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_second():
    cmds = _quickstart_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    assert "moepack example" in cmds[0] and "moepack convert" in cmds[0] and "moepack verify" in cmds[0]
    assert "pytest" in cmds[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert cmds[1] in ci.splitlines(), ".ci/run must run the README's test command verbatim"


def test_quickstart_main_job_runs(tmp_path, capsys):
    """Run every `moepack ...` step of the first command (the installs are the package itself)."""
    steps = [s.strip() for s in _quickstart_commands()[0].split("&&")]
    ran = 0
    for step in steps:
        if step.startswith("d=$(mktemp -d)"):
            continue
        if not step.startswith("moepack "):
            continue
        argv = shlex.split(step.replace("$d", str(tmp_path)))[1:]
        with pytest.raises(SystemExit) as e:
            main(argv)
        out, err = capsys.readouterr()
        assert e.value.code == 0, f"`{step}` exited {e.value.code}: {err.strip()}"
        ran += 1
    assert ran == 3
    assert "PASS" in out
