"""When gemm2 and gemm1 run the Hopper warp-specialised Gluon kernels (`triton_moe.ws_down_applies`,
`triton_moe.ws_up_applies`) and when the Triton `_moe_gemm` with the same tile runs instead. The kernels
themselves run only on a compute capability 9.0 GPU (tests/kernels/test_triton_gpu.py::test_ws_down_same_bits_gpu,
::test_ws_up_same_bits_gpu)."""
import dataclasses

import pytest
import torch

from moepack.formats.model import Activation
from moepack.kernels import triton_moe
from moepack.kernels.configs import GemmConfig, MoEConfig, pick

META = triton_moe.MoEMeta(quant="fp8_block", activation=Activation("silu"), gated=True, E_l=4, H=512, Ip=256)
G2 = GemmConfig(block_n=256, block_k=128, num_warps=8, num_stages=4, tma=True, ws=True)
CFG = MoEConfig(per_pair=False, block_m=64, gemm1=G2, gemm2=G2, prequant=True)


def _w(n=512, k=256, device="cpu"):
    return torch.zeros(4, n, k, dtype=torch.float8_e4m3fn, device=device)


def test_off_hopper_the_triton_kernel_runs():
    gluon_fp8 = pytest.importorskip("moepack.kernels.gluon_fp8")
    assert not gluon_fp8.supported(torch.device("cpu"))
    assert not triton_moe.ws_down_applies(META, CFG, G2, _w(), 512, 256)
    assert not triton_moe.ws_up_applies(META, CFG, G2, _w(512, 512), 512, 512)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="needs a compute capability 9.0 GPU")
@pytest.mark.gpu
def test_each_condition_is_needed_on_hopper():
    w = _w(device="cuda")
    assert triton_moe.ws_down_applies(META, CFG, G2, w, 512, 256)
    no = [
        (META, CFG, dataclasses.replace(G2, ws=False), w, 512, 256),
        (META, dataclasses.replace(CFG, prequant=False), G2, w, 512, 256),
        (META, dataclasses.replace(CFG, per_pair=True), G2, w, 512, 256),
        (META, dataclasses.replace(CFG, block_m=128), G2, w, 512, 256),
        (META, CFG, dataclasses.replace(G2, swap_ab=True), w, 512, 256),
        (dataclasses.replace(META, quant="fp8_tensor"), CFG, G2, w, 512, 256),
        (META, CFG, G2, _w(384, 256, "cuda"), 384, 256),       # N not a multiple of 256
        (META, CFG, G2, _w(512, 192, "cuda"), 512, 192),       # K not a multiple of 128
    ]
    for args in no:
        assert not triton_moe.ws_down_applies(*args), args


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="needs a compute capability 9.0 GPU")
@pytest.mark.gpu
def test_each_gemm1_condition_is_needed_on_hopper():
    """gemm1 (w13 [E, 2 Ip, H] = [4, 512, 512]) also needs the silu gate without a clamp and 256-column
    tiles that quantize gemm2's input (so block_n 256 and prequant)."""
    w = _w(512, 512, "cuda")
    assert triton_moe.ws_up_applies(META, CFG, G2, w, 512, 512)
    no = [
        (META, CFG, dataclasses.replace(G2, ws=False), w, 512, 512),
        (META, dataclasses.replace(CFG, prequant=False), G2, w, 512, 512),
        (META, CFG, dataclasses.replace(G2, block_n=128), w, 512, 512),
        (META, dataclasses.replace(CFG, block_m=32), G2, w, 512, 512),
        (dataclasses.replace(META, gated=False), CFG, G2, w, 512, 512),
        (dataclasses.replace(META, activation=Activation("swiglu_oai", alpha=1.702, limit=7.0)), CFG, G2, w, 512,
         512),
        (dataclasses.replace(META, activation=Activation("silu", limit=7.0)), CFG, G2, w, 512, 512),
        (META, CFG, G2, _w(512, 448, "cuda"), 512, 448),       # K not a multiple of 128
    ]
    for args in no:
        assert not triton_moe.ws_up_applies(*args), args


def test_the_table_asks_for_it_only_where_it_can_apply():
    """The tuned table's ws tiles are DeepSeek TP1 (both GEMMs) and TP8 (gemm1) at M >= 1024, with what the
    kernels need."""
    meta = triton_moe.MoEMeta(quant="fp8_block", activation=Activation("silu"), gated=True, E_l=256, H=7168, Ip=2048)
    for M in (1, 8, 64, 256, 1024, 4096, 16384):
        for Ip in (256, 2048):
            cfg = pick("fp8_block", M, 256, 8, 7168, Ip)
            for g in (cfg.gemm1, cfg.gemm2):
                if g.ws:
                    assert M >= 1024 and (Ip == 2048 or g is cfg.gemm1)
                    assert cfg.block_m == 64 and cfg.prequant and not cfg.per_pair and not g.swap_ab
                    assert g.block_n == 256 and 2 <= g.num_stages <= (5 if g is cfg.gemm1 else 4)
            if cfg.gemm1.ws:
                assert triton_moe.fuses_quant(meta, cfg)
    assert pick("fp8_block", 16384, 256, 8, 7168, 2048).gemm2.ws


MX_META = triton_moe.MoEMeta(quant="mxfp4", activation=Activation("swiglu_oai", alpha=1.702, limit=7.0), gated=True,
                             E_l=4, H=256, Ip=192)
MX_G = GemmConfig(block_n=128, block_k=64, num_warps=8, num_stages=4, swap_ab=True, ws=True)
MX_CFG = MoEConfig(per_pair=False, block_m=128, gemm1=MX_G, gemm2=MX_G)


def _mx(n=384, k=256, device="cpu"):
    """(bf16 activations [8, k], packed weights [4, n, k/2] uint8, e8m0 scales [4, k/32, n] uint8)."""
    return (torch.zeros(8, k, dtype=torch.bfloat16, device=device), torch.zeros(4, n, k // 2, dtype=torch.uint8,
            device=device), torch.zeros(4, k // 32, n, dtype=torch.uint8, device=device))


def test_mxfp4_off_hopper_the_triton_kernel_runs():
    pytest.importorskip("moepack.kernels.gluon_mxfp4")
    for stage, (n, k) in ((1, (384, 256)), (2, (256, 192))):
        assert not triton_moe.ws_mxfp4_applies(MX_META, MX_CFG, MX_G, stage, *_mx(n, k), n, k)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="needs a compute capability 9.0 GPU")
@pytest.mark.gpu
def test_each_mxfp4_condition_is_needed_on_hopper():
    """The MXFP4 Gluon GEMMs need the config to ask (ws) for their tile (sorted path, block_m 128, swap-AB,
    128 x 64), the tiled weight layout with K % 64 == 0, N % 128 == 0, bf16 activations and (gemm1) a gated
    swiglu_oai / silu layer."""
    a, w, s = _mx(device="cuda")
    assert triton_moe.ws_mxfp4_applies(MX_META, MX_CFG, MX_G, 1, a, w, s, 384, 256)
    no = [
        (MX_META, MX_CFG, dataclasses.replace(MX_G, ws=False), 1, a, w, s, 384, 256),
        (MX_META, dataclasses.replace(MX_CFG, per_pair=True), MX_G, 1, a, w, s, 384, 256),
        (MX_META, dataclasses.replace(MX_CFG, block_m=64), MX_G, 1, a, w, s, 384, 256),
        (MX_META, MX_CFG, dataclasses.replace(MX_G, swap_ab=False), 1, a, w, s, 384, 256),
        (MX_META, MX_CFG, dataclasses.replace(MX_G, block_n=256), 1, a, w, s, 384, 256),
        (MX_META, MX_CFG, dataclasses.replace(MX_G, block_k=128), 1, a, w, s, 384, 256),
        (dataclasses.replace(MX_META, fp4_tiles=(False, False)), MX_CFG, MX_G, 1, a, w, s, 384, 256),
        (dataclasses.replace(MX_META, gated=False), MX_CFG, MX_G, 1, a, w, s, 384, 256),
        (dataclasses.replace(MX_META, quant="fp8_block"), MX_CFG, MX_G, 1, a, w, s, 384, 256),
        (MX_META, MX_CFG, MX_G, 1, a.half(), w, s, 384, 256),
        (MX_META, MX_CFG, MX_G, 2, *_mx(192, 256, "cuda"), 192, 256),     # N not a multiple of 128
    ]
    for args in no:
        assert not triton_moe.ws_mxfp4_applies(*args), args[:4]


@pytest.mark.parametrize("per_pair,block_m,swap,warps,tail_div,expected", [
    (False, 128, True, 8, 4, 4),     # swap-AB: the tokens are wgmma's N side, quarters of 128 rows are fine
    (False, 128, True, 4, 4, 2),     # 4-warp programs stop at halves (a quarter tile raced on the H100)
    (False, 32, True, 8, 4, 2),      # no tile below 16 rows
    (False, 16, True, 8, 4, 1),
    (False, 128, False, 8, 4, 2),    # plain: block_m / d must stay a warpgroup's 64 wgmma rows
    (False, 64, False, 8, 4, 1),
    (False, 128, True, 8, 1, 1),     # not asked for
    (True, 128, True, 8, 4, 1),      # the per-pair path has no padded blocks
])
def test_tail_tiles_only_where_the_small_tile_keeps_wgmma(per_pair, block_m, swap, warps, tail_div, expected):
    g = GemmConfig(block_n=128, block_k=64, num_warps=warps, num_stages=3, swap_ab=swap, tail_div=tail_div)
    cfg = MoEConfig(per_pair=per_pair, block_m=block_m, gemm1=g, gemm2=g)
    assert triton_moe.tail_tiles(cfg, g) == expected


def test_tuned_table_ships_tail_tiles_for_gpt_oss_prefill():
    for M in (1024, 4096, 16384):
        cfg = pick("mxfp4", M, 128, 4, 2880, 2880)
        assert triton_moe.tail_tiles(cfg, cfg.gemm1) >= 2 and triton_moe.tail_tiles(cfg, cfg.gemm2) == 2
