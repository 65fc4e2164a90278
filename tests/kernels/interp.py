"""Run a runner script of this folder under Triton's CPU interpreter, in a subprocess (Triton chooses
interpreter or compiler when a kernel is decorated, so TRITON_INTERPRET=1 must be set before moepack.kernels
is imported, which the test process may already have done), and return the JSON object it prints last."""
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def run_interpreted(script: str, timeout: int = 300) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(HERE / script)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
