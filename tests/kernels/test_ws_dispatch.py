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
