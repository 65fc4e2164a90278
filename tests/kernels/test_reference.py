"""The float32 CPU reference against the independent float64 computation, every format."""
import pytest
import torch

from moe_cases import CASES, expected64, make_case, rel_err
from moepack.kernels.reference import dequantize, moe_reference


@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_float64(name):
    x, tw, ids, local, _, _ = make_case(name, seed=11)
    out = moe_reference(x, tw, ids, local)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert rel_err(out, expected64(x, tw, ids, local)) < 1e-5


def test_reference_w2_bias_switch_and_skipped_experts():
    x, tw, ids, local, _, _ = make_case("mxfp4_swiglu_bias", seed=3)
    with_b = moe_reference(x, tw, ids, local, dtype=torch.float64)
    without = moe_reference(x, tw, ids, local, add_w2_bias=False, dtype=torch.float64)
    # the bias enters once per routed slot on this rank, times its weight
    kept = torch.where(ids >= 0, tw.double(), torch.zeros_like(tw.double()))
    bias = local.w2_bias.double()
    want = sum(kept[:, j, None] * bias[ids[:, j].clamp(min=0).long()] for j in range(ids.shape[1]))
    assert torch.allclose(with_b - without, want, atol=1e-9)
    all_skipped = moe_reference(x, tw, torch.full_like(ids, -1), local)
    assert torch.count_nonzero(all_skipped) == 0


def test_dequantize_shapes():
    _, _, _, local, _, meta = make_case("fp8_block_silu")
    w13, w2 = dequantize(local)
    assert w13.shape == (meta["E_l"], 2 * meta["Ip"], meta["H"]) and w2.shape == (meta["E_l"], meta["H"], meta["Ip"])
