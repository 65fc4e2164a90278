"""The single-launch decode (`triton_decode.moe_decode`) compiled on the GPU, where its programs really run
side by side: tickets, split-K partials summed by whichever split finishes last, gemm2 units waiting on
their pair's gemm1 tiles, the counters reset by the last program. Against float64, the two-launch
per-pair path, itself (repeated launches, CUDA-graph replays) and the counters left behind."""
import dataclasses

import pytest
import torch

from moe_cases import expected64, make_case, rel_err, to_device as _to
from moepack.kernels.reference import TOLERANCE

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cfg(swap, s1, s2, fused=2, tma=False):
    """Per-pair config: block_k 128, 64-row swap-AB tiles (one warpgroup's wgmma) or 32-row plain ones."""
    from moepack.kernels.configs import GemmConfig, MoEConfig
    g = GemmConfig(block_n=64 if swap else 32, block_k=128, num_warps=4, num_stages=3, swap_ab=swap, tma=tma)
    return MoEConfig(per_pair=True, block_m=16, gemm1=dataclasses.replace(g, split_k=s1),
                     gemm2=dataclasses.replace(g, split_k=s2), fused=fused)


def _sync_clean():
    from moepack.kernels import triton_decode
    torch.cuda.synchronize()
    return all(int(b.abs().sum()) == 0 for b in triton_decode._SYNC.values())


@cuda
@pytest.mark.parametrize("name,h,ip,t", [("mxfp4_swiglu_bias", 512, 512, 2), ("mxfp4_tiles_w13_only", 384, 256, 8),
                                          ("fp8_block_silu", 1024, 256, 2), ("fp8_block_silu", 512, 384, 8)])
@pytest.mark.parametrize("swap,s1,s2", [(True, 1, 1), (True, 4, 2), (False, 3, 1)])
def test_decode_gpu_against_float64(name, h, ip, t, swap, s1, s2):
    """bf16 activations; K split so that some splits are short (H / 128 steps over s1 splits)."""
    from moepack.kernels import triton_moe
    x, tw, ids, local, stored, meta = make_case(name, seed=41, x_dtype=torch.bfloat16, H=h, Ip=ip, T=t)
    cfg = _cfg(swap, s1, s2)
    assert triton_moe.decode_applies(triton_moe.MoEMeta(**meta), cfg)
    out = triton_moe.fused_moe(x.cuda(), tw.cuda(), ids.cuda(), _to(stored, "cuda"), meta, config=cfg)
    assert rel_err(out, expected64(x, tw, ids, local)) < TOLERANCE[meta["quant"]]
    assert _sync_clean()


@cuda
@pytest.mark.parametrize("name", ["mxfp4_swiglu_bias", "fp8_block_silu"])
def test_decode_unsplit_float32_same_bits_as_two_launches(name):
    """K unsplit, float32 activations (y is float32 on both paths): the same arithmetic as `_moe_gemm`'s
    per-pair launches, so the same bits."""
    from moepack.kernels import triton_moe
    x, tw, ids, local, stored, meta = make_case(name, seed=43, x_dtype=torch.float32, H=512, Ip=256, T=4)
    xs, tws, idss, st = x.cuda(), tw.cuda(), ids.cuda(), _to(stored, "cuda")
    one = triton_moe.fused_moe(xs, tws, idss, st, meta, config=_cfg(True, 1, 1))
    two = triton_moe.fused_moe(xs, tws, idss, st, meta, config=_cfg(True, 1, 1, fused=0))
    assert torch.equal(one, two)


@cuda
@pytest.mark.parametrize("name,tma", [("mxfp4_swiglu_bias", False), ("fp8_block_silu", True)])
def test_decode_repeatable_and_graph_replays(name, tma):
    """One program per multiprocessor pair of units at most (fused=1) on a shape of many units (gemm1
    in 7 splits): 20 eager launches and 3 graph replays give the same bits, the counters are zero after
    each, and a graph replayed after an eager launch still sees zeroed counters."""
    from moepack.kernels import triton_moe
    x, tw, ids, local, stored, meta = make_case(name, seed=47, x_dtype=torch.bfloat16, H=896, Ip=512, T=2)
    xs, tws, idss, st = x.cuda(), tw.cuda(), ids.cuda(), _to(stored, "cuda")
    cfg = _cfg(True, 7, 2, fused=1, tma=tma)
    first = triton_moe.fused_moe(xs, tws, idss, st, meta, config=cfg)
    assert rel_err(first, expected64(x, tw, ids, local)) < TOLERANCE[meta["quant"]]
    for _ in range(20):
        assert torch.equal(triton_moe.fused_moe(xs, tws, idss, st, meta, config=cfg), first)
    assert _sync_clean()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_moe.fused_moe(xs, tws, idss, st, meta, config=cfg)
    for _ in range(3):
        out.fill_(float("nan"))
        graph.replay()
        assert torch.equal(out, first)
        assert _sync_clean()

