"""Runs the routing sort (moepack/kernels/align.py) under the CPU interpreter; started by test_align.py in
a subprocess with TRITON_INTERPRET=1. Prints one JSON object: case -> "ok" or the broken contract."""
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from align_spec import ALIGN_CASES, check_align, make_ids  # noqa: E402
from moepack.kernels.align import moe_align  # noqa: E402


def main():
    out = {}
    for name, (T, k, E, bm, how) in ALIGN_CASES.items():
        ids = make_ids(T, k, E, how)
        try:
            check_align(ids, E, bm, *moe_align(ids, E, bm))
            out[name] = "ok"
        except AssertionError as exc:
            out[name] = f"broken: {exc}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
