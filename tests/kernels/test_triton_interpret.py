"""Triton fused-MoE kernels on the CPU interpreter (TRITON_INTERPRET=1, in a subprocess: Triton chooses
interpreter or compiler when a kernel is decorated, so the flag must be set before moepack.kernels is
imported, which this process may already have done). Every format and activation, both routing paths
(sorted blocks, per-pair decode), plain and swap-AB tiles, FP8 weight tiles by pointer loads and by TMA
descriptors, float32 and float16 activations, against float64 from the logical tensors."""
import pytest

from interp import run_interpreted
from moe_cases import CASES
from moepack.kernels.reference import TOLERANCE

# float32/float16 activations: mxfp4 is exact up to fp16 intermediates; fp8 quantizes activations
# (4% is the e4m3 rounding of two GEMM inputs), and is checked to 1e-4 against the emulated rounding.
PLAIN_TOL = {"mxfp4": 2e-3, "fp8_block": TOLERANCE["fp8_block"], "fp8_tensor": TOLERANCE["fp8_tensor"]}
EMULATED_TOL = {"fp8_block": 1e-4, "fp8_tensor": 1e-4}


@pytest.fixture(scope="module")
def interp_results():
    return run_interpreted("interp_runner.py")


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_under_interpreter(interp_results, name):
    quant = CASES[name][0]
    runs = {k: v for k, v in interp_results.items() if k.startswith(name + "/")}
    assert len(runs) == (6 if quant == "fp8_block" else 5)
    for key, errs in runs.items():
        assert errs["plain"] < PLAIN_TOL[quant], (key, errs)
        if "emulated" in errs:
            assert errs["emulated"] < EMULATED_TOL[quant], (key, errs)


@pytest.mark.parametrize("prefix,taken", [("fusedquant:", "fused"), ("resident:", "resident")])
def test_variant_kernels_are_bit_identical(interp_results, prefix, taken):
    """gemm1 quantizing gemm2's input in its epilogue (fusedquant), and gemm2 walking several output tiles
    per program (resident): the variant is really taken and gives the same bits as the plain launches."""
    runs = {k: v for k, v in interp_results.items() if k.startswith(prefix)}
    assert len(runs) == 4 * sum(1 for c in CASES.values() if c[0] == "fp8_block")
    for key, r in runs.items():
        assert r[taken] and r["same_bits"], (key, r)
        assert r["plain"] < PLAIN_TOL["fp8_block"], (key, r)


def test_tail_tiles_are_bit_identical(interp_results):
    """tail_div (an expert's last block run as a tile of block_m / 2 or / 4 rows where its pairs fit): every
    format, swap-AB (quarters and halves) and plain tiles (halves only: a quarter of 128 rows would leave
    wgmma); same bits as whole tiles (the GPU test checks bits for every dtype; here the float32 MXFP4 runs,
    whose float32 dot numpy may sum in a shape-dependent order, to within 1e-6)."""
    runs = {k: v for k, v in interp_results.items() if k.startswith("tailtiles:")}
    assert len(runs) == 3 * len(CASES)
    for key, r in runs.items():
        quant = CASES[key.split(":")[1].split("/")[0]][0]
        assert r["tail_div"] == (4 if key.endswith("/swap") else 2), (key, r)
        loose = quant == "mxfp4" and "/float32/" in key
        assert r["same_bits"] or (loose and r["diff"] < 1e-6), (key, r)
        assert r["plain"] < PLAIN_TOL[quant], (key, r)
