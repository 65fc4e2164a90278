"""The routing sort (moe_align): pairs grouped by expert in id order, each run padded to block_m with the
sentinel P, block expert ids, -1 / P past the used range, ids < 0 left out. Checked from the outputs
alone (align_spec.check_align) under the CPU interpreter and, at serving sizes, on the GPU."""
import pytest
import torch

from align_spec import ALIGN_CASES, check_align, make_ids
from interp import run_interpreted


@pytest.fixture(scope="module")
def interp_results():
    return run_interpreted("align_runner.py")


@pytest.mark.parametrize("name", list(ALIGN_CASES))
def test_align_under_interpreter(interp_results, name):
    assert interp_results[name] == "ok"


def test_check_align_catches_a_misplaced_pair():
    """The checker itself: swapping two pairs of different experts must be caught."""
    ids = torch.tensor([[0, 1], [1, 0]], dtype=torch.int32)
    tail = [4] * 4                                           # P = 4 pairs, 3 blocks of 4 slots
    sorted_ids = [0, 3, 4, 4, 1, 2, 4, 4] + tail             # expert 0: pairs 0, 3; expert 1: pairs 1, 2
    check_align(ids, 2, 4, sorted_ids, [0, 1, -1], [2])
    with pytest.raises(AssertionError):                      # two pairs of different experts swapped
        check_align(ids, 2, 4, [0, 1, 4, 4, 3, 2, 4, 4] + tail, [0, 1, -1], [2])
    with pytest.raises(AssertionError):                      # a block past the used range not marked -1
        check_align(ids, 2, 4, sorted_ids, [0, 1, 1], [2])
    with pytest.raises(AssertionError):                      # a padding slot without the sentinel
        check_align(ids, 2, 4, [0, 3, 4, 0] + [1, 2, 4, 4] + tail, [0, 1, -1], [2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("T,k,E,bm,how", [(4096, 8, 256, 64, "random"), (16384, 4, 128, 128, "random"),
                                          (2048, 8, 256, 16, "random_with_skips"), (3000, 4, 128, 64, "one_expert"),
                                          (7, 8, 256, 16, "random")])
def test_align_gpu(T, k, E, bm, how):
    from moepack.kernels.align import moe_align
    ids = make_ids(T, k, E, how, seed=T)
    out = moe_align(ids.cuda(), E, bm)
    check_align(ids, E, bm, *(t.cpu() for t in out))
