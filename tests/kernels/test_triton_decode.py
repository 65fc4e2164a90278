"""The single-launch decode (`triton_decode`: both GEMMs of the per-pair path in one persistent kernel,
work by ticket, K optionally split) on the CPU interpreter, against float64 and the two-launch path."""
import pytest

from interp import run_interpreted
from moepack.kernels.reference import TOLERANCE

TOL = {"mxfp4": 2e-3, "fp8_block": TOLERANCE["fp8_block"]}


@pytest.fixture(scope="module")
def decode_results():
    return run_interpreted("decode_runner.py")


def test_every_run_takes_the_single_launch(decode_results):
    assert len(decode_results) == 7
    assert all(r["taken"] for r in decode_results.values())


def test_within_tolerance_of_float64(decode_results):
    for key, r in decode_results.items():
        assert r["plain"] < TOL["fp8_block" if key.startswith("fp8") else "mxfp4"], (key, r)


def test_unsplit_float32_gives_the_two_launch_bits(decode_results):
    runs = {k: r for k, r in decode_results.items() if "same_bits" in r}
    assert len(runs) == 3
    assert all(r["same_bits"] for r in runs.values()), runs


def test_counters_are_zero_after_every_launch(decode_results):
    assert all(r["sync_zero"] for r in decode_results.values())
