"""Triton fused MoE on the GPU (bf16 activations, compiled kernels), every format and path, against
float64 from the logical tensors; also CUDA-graph capture and replay."""
import dataclasses

import pytest
import torch

from moe_cases import CASES, expected64, ids_with_counts, make_case, rel_err, to_device as _to, tokens_for
from moepack.kernels.reference import TOLERANCE

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("per_pair,prequant", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("swap", [False, True])
def test_fused_moe_gpu(name, per_pair, prequant, swap):
    """swap-AB tiles use block_n 64, so the weight side fills one warpgroup's 64-row wgmma (register
    operand after the MXFP4 decode); plain tiles use 32 (mma.sync at block_m 16)."""
    from moepack.kernels.configs import GemmConfig, MoEConfig
    from moepack.kernels.triton_moe import fused_moe
    x, tw, ids, local, stored, meta = make_case(name, seed=5, x_dtype=torch.bfloat16)
    g = GemmConfig(block_n=64 if swap else 32, block_k=128, num_warps=4, num_stages=2, swap_ab=swap)
    cfg = MoEConfig(per_pair=per_pair, block_m=16, gemm1=g, gemm2=g, prequant=prequant)
    out = fused_moe(x.cuda(), tw.cuda(), ids.cuda(), _to(stored, "cuda"), meta, config=cfg)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, expected64(x, tw, ids, local)) < TOLERANCE[meta["quant"]]


@cuda
def test_fused_moe_default_configs_and_graph():
    from moepack.kernels.triton_moe import fused_moe
    for name in ("mxfp4_swiglu_bias", "fp8_block_silu"):
        x, tw, ids, local, stored, meta = make_case(name, seed=9, x_dtype=torch.bfloat16)
        xs, tws, idss, st = x.cuda(), tw.cuda(), ids.cuda(), _to(stored, "cuda")
        ref = expected64(x, tw, ids, local)
        assert rel_err(fused_moe(xs, tws, idss, st, meta), ref) < TOLERANCE[meta["quant"]]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fused_moe(xs, tws, idss, st, meta)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, ref) < TOLERANCE[meta["quant"]]


@cuda
@pytest.mark.parametrize("name", ["mxfp4_swiglu_bias", "fp8_block_silu"])
def test_every_shipped_config(name):
    """Each distinct tile config of the tuned table (configs.TUNED) on a small case: masked K tails
    (block_k 256 > K), block_m 64/128 with wgmma, prequant on and off."""
    from moepack.kernels.configs import shipped_configs
    from moepack.kernels.triton_moe import fused_moe
    x, tw, ids, local, stored, meta = make_case(name, seed=11, x_dtype=torch.bfloat16)
    xs, tws, idss, st = x.cuda(), tw.cuda(), ids.cuda(), _to(stored, "cuda")
    ref = expected64(x, tw, ids, local)
    for cfg in shipped_configs(meta["quant"]):
        err = rel_err(fused_moe(xs, tws, idss, st, meta, config=cfg), ref)
        assert err < TOLERANCE[meta["quant"]], (cfg, err)


@cuda
def test_mxfp4_scale_fold_is_bit_identical():
    """FOLD (one bf16 multiply by 2^(s-1) instead of 2^126 then 2^(s-127)) must give the same bits for every
    scale code it is used for (0..128, including results that underflow to subnormals or zero)."""
    import dataclasses

    from moepack.kernels.configs import GemmConfig, MoEConfig
    from moepack.kernels.triton_moe import MoEMeta, fused_moe
    from moepack.kernels.triton_mxfp4 import small_scales
    x, tw, ids, local, stored, meta = make_case("mxfp4_swiglu_bias", seed=13, x_dtype=torch.bfloat16)
    st = _to(stored, "cuda")
    g = torch.Generator().manual_seed(3)
    for role in ("w13_weight_scale", "w2_weight_scale"):
        st[role] = torch.randint(0, 129, st[role].shape, generator=g, dtype=torch.int32).to(torch.uint8).cuda()
    assert small_scales(st["w13_weight_scale"], st["w2_weight_scale"])
    plain = MoEMeta(**meta)
    folded = dataclasses.replace(plain, small_scales=True)
    for swap in (False, True):
        gc = GemmConfig(block_n=64, block_k=128, num_warps=4, num_stages=2, swap_ab=swap)
        cfg = MoEConfig(per_pair=False, block_m=16, gemm1=gc, gemm2=gc)
        a = fused_moe(x.cuda(), tw.cuda(), ids.cuda(), st, plain, config=cfg)
        b = fused_moe(x.cuda(), tw.cuda(), ids.cuda(), st, folded, config=cfg)
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))


@cuda
@pytest.mark.parametrize("name", ["mxfp4_swiglu_bias", "mxfp4_tiles_w13_only"])
@pytest.mark.parametrize("fold", [False, True])
def test_mxfp4_mma_tiles_same_bits_as_nibble_split(name, fold):
    """Weights stored in `triton_fp4_mma_tiles` + `triton_fp4_bf16_bits` order (what the layout writes where
    they fit) and the same weights without those two steps (folders converted before they existed) give
    the same bits, for every shipped MXFP4 config and plain / swap-AB tiles at block_m 16 and 64 (the PTX
    decode reads whole 32-bit words, so this pins the register layout Triton gives them); fp16 activations
    (the portable decode, compiled for the GPU) stay within tolerance of float64."""
    import dataclasses

    from moepack.kernels.configs import GemmConfig, MoEConfig, shipped_configs
    from moepack.kernels.triton_moe import MoEMeta, fused_moe
    from moepack.layouts.triton import Fp4Bf16Bits, Fp4MmaTiles
    x, tw, ids, local, stored, meta = make_case(name, seed=29, x_dtype=torch.bfloat16)
    tiled_roles = [r for r in ("w13_weight", "w2_weight") if r in stored and stored[r].shape[-2] % 16 == 0
                   and stored[r].shape[-1] % 32 == 0]
    assert tiled_roles == (["w13_weight", "w2_weight"] if name == "mxfp4_swiglu_bias" else ["w13_weight"])
    st = _to(stored, "cuda")
    if fold:
        g = torch.Generator().manual_seed(5)
        for role in ("w13_weight_scale", "w2_weight_scale"):
            st[role] = torch.randint(100, 129, st[role].shape, generator=g, dtype=torch.int32).to(torch.uint8).cuda()
    flat = {r: (Fp4MmaTiles().invert(Fp4Bf16Bits().invert(t)) if r in tiled_roles else t) for r, t in st.items()}
    tiled_meta = dataclasses.replace(MoEMeta(**meta), small_scales=fold)
    assert tiled_meta.fp4_tiles is None
    flat_meta = dataclasses.replace(tiled_meta, fp4_tiles=(False, False))
    cfgs = shipped_configs("mxfp4") + [
        MoEConfig(per_pair=pp, block_m=bm, gemm1=GemmConfig(64, bk, 4, 2, sw), gemm2=GemmConfig(64, bk, 4, 2, sw))
        for pp, bm, bk, sw in ((False, 16, 64, True), (True, 16, 256, False), (False, 64, 128, True),
                               (False, 64, 64, False))]
    args = (x.cuda(), tw.cuda(), ids.cuda())
    for cfg in cfgs:
        a = fused_moe(*args, st, tiled_meta, config=cfg)
        b = fused_moe(*args, flat, flat_meta, config=cfg)
        assert torch.equal(a.view(torch.int16), b.view(torch.int16)), cfg
    if not fold:
        ref = expected64(x, tw, ids, local)
        assert rel_err(a, ref) < TOLERANCE["mxfp4"]
        half = fused_moe(x.half().cuda(), tw.cuda(), ids.cuda(), st, tiled_meta, config=cfgs[0])
        assert rel_err(half, ref) < TOLERANCE["mxfp4"]


@cuda
@pytest.mark.parametrize("name", ["fp8_block_silu", "fp8_tensor_silu"])
@pytest.mark.parametrize("per_pair,prequant", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("swap", [False, True])
def test_fp8_tma_weight_tiles_match_pointer_loads(name, per_pair, prequant, swap):
    """Weight tiles read through TMA tensor descriptors give the same bits as pointer loads (same tiles,
    same MMA order), and within tolerance of float64; block_n 64 divides every N of these cases, so the
    descriptor path is really taken (checked)."""
    from moepack.kernels.configs import GemmConfig, MoEConfig
    from moepack.kernels.triton_moe import fused_moe, weight_descriptor
    x, tw, ids, local, stored, meta = make_case(name, seed=17, x_dtype=torch.bfloat16)
    st = _to(stored, "cuda")
    E, N1, K1 = st["w13_weight"].shape
    assert weight_descriptor(st["w13_weight"], N1, K1, 64, 128) is not None
    outs = []
    for tma in (False, True):
        g = GemmConfig(block_n=64, block_k=128, num_warps=4, num_stages=3, swap_ab=swap, tma=tma)
        cfg = MoEConfig(per_pair=per_pair, block_m=16, gemm1=g, gemm2=g, prequant=prequant)
        outs.append(fused_moe(x.cuda(), tw.cuda(), ids.cuda(), st, meta, config=cfg))
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))
    assert rel_err(outs[1], expected64(x, tw, ids, local)) < TOLERANCE[meta["quant"]]


@cuda
def test_weight_descriptor_refuses_what_tma_cannot_serve():
    from moepack.kernels.triton_moe import weight_descriptor
    w = torch.zeros(4, 192, 256, dtype=torch.float8_e4m3fn, device="cuda")
    assert weight_descriptor(w, 192, 256, 64, 128) is not None
    assert weight_descriptor(w, 192, 256, 128, 128) is None             # a box would cross experts
    assert weight_descriptor(w[:, :, :200], 192, 200, 64, 128) is None  # not contiguous
    assert weight_descriptor(w.view(torch.uint8)[:, :, :240].contiguous(), 192, 240, 64, 128) is not None
    assert weight_descriptor(torch.zeros(4, 64, 40, dtype=torch.uint8, device="cuda"), 64, 40, 64, 128) is None


@cuda
@pytest.mark.parametrize("name", ["mxfp4_swiglu_bias", "fp8_block_silu"])
def test_programmatic_dependent_launch_same_bits(name, monkeypatch):
    """The layer launched with programmatic dependent launch (each kernel waits for its predecessor on
    the GPU) gives the same bits as without it, eagerly and replayed from a CUDA graph, for every shipped
    config of the format (forced on: by default it is on for M <= PDL_MAX_M, this case's M included)."""
    from moepack.kernels import triton_moe
    from moepack.kernels.configs import shipped_configs
    x, tw, ids, local, stored, meta = make_case(name, seed=19, x_dtype=torch.bfloat16)
    xs, tws, idss, st = x.cuda(), tw.cuda(), ids.cuda(), _to(stored, "cuda")
    for cfg in shipped_configs(meta["quant"]):
        monkeypatch.setattr(triton_moe, "USE_PDL", False)
        plain = triton_moe.fused_moe(xs, tws, idss, st, meta, config=cfg)
        monkeypatch.setattr(triton_moe, "USE_PDL", True)
        assert triton_moe.pdl_enabled(xs.device) == (torch.cuda.get_device_capability()[0] >= 9)
        eager = triton_moe.fused_moe(xs, tws, idss, st, meta, config=cfg)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = triton_moe.fused_moe(xs, tws, idss, st, meta, config=cfg)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for got in (eager, out):
            assert torch.equal(plain.view(torch.int16), got.view(torch.int16)), cfg


@cuda
def test_pdl_policy_follows_m_and_format(monkeypatch):
    from moepack.kernels import triton_moe
    monkeypatch.setattr(triton_moe, "USE_PDL", None)
    hopper = torch.cuda.get_device_capability()[0] >= 9
    dev = torch.device("cuda")
    assert triton_moe.pdl_enabled(dev, triton_moe.PDL_MAX_M) == hopper
    assert not triton_moe.pdl_enabled(dev, triton_moe.PDL_MAX_M + 1)
    assert not triton_moe.pdl_enabled(dev, 1, "mxfp4")
    assert not triton_moe.pdl_enabled(torch.device("cpu"), 1)


@cuda
@pytest.mark.parametrize("swap,tma", [(False, False), (True, False), (False, True), (True, True)])
def test_fused_quantization_epilogue_same_bits_gpu(swap, tma, monkeypatch):
    """gemm1 tiles of 256 gated columns (128 outputs, one group) quantize gemm2's input in the epilogue:
    same bits as the separate quantize_groups pass over the bf16 intermediate."""
    from moepack.kernels import triton_moe
    from moepack.kernels.configs import GemmConfig, MoEConfig
    x, tw, ids, local, stored, meta = make_case("fp8_block_silu", seed=23, x_dtype=torch.bfloat16)
    args = (x.cuda(), tw.cuda(), ids.cuda(), _to(stored, "cuda"), meta)
    g1 = GemmConfig(block_n=256, block_k=128, num_warps=4, num_stages=3, swap_ab=swap, tma=tma)
    g2 = GemmConfig(block_n=64, block_k=128, num_warps=4, num_stages=3, swap_ab=swap, tma=tma)
    cfg = MoEConfig(per_pair=False, block_m=16, gemm1=g1, gemm2=g2, prequant=True)
    assert triton_moe.fuses_quant(triton_moe.MoEMeta(**meta), cfg)
    fused = triton_moe.fused_moe(*args, config=cfg)
    monkeypatch.setattr(triton_moe, "fuses_quant", lambda m, c: False)
    two_pass = triton_moe.fused_moe(*args, config=cfg)
    assert torch.equal(fused.view(torch.int16), two_pass.view(torch.int16))
    assert rel_err(fused, expected64(x, tw, ids, local)) < TOLERANCE[meta["quant"]]


@cuda
@pytest.mark.parametrize("block_m,swap,ip", [(16, True, None), (64, False, None), (64, False, 96), (16, True, 96)])
def test_resident_down_same_bits_gpu(block_m, swap, ip):
    """gemm2 with several output tiles per program (`_moe_down_resident`: the block's rows held, the loop
    over tiles software-pipelined, weight tiles through TMA) gives the bits of one tile per program; K = Ip
    of two 128-groups (the second partial) or one; N = 192 in tiles of 64, two per program, so the second
    program's second tile lies past N."""
    from moepack.kernels import triton_moe
    from moepack.kernels.configs import GemmConfig, MoEConfig
    x, tw, ids, local, stored, meta = make_case("fp8_block_silu", seed=29, x_dtype=torch.bfloat16, Ip=ip)
    args = (x.cuda(), tw.cuda(), ids.cuda(), _to(stored, "cuda"), meta)
    g1 = GemmConfig(block_n=64, block_k=128, num_warps=4, num_stages=3, swap_ab=swap, tma=True)
    outs = []
    for n_tiles in (1, 2):
        g2 = GemmConfig(block_n=64, block_k=128, num_warps=4, num_stages=3, swap_ab=swap, tma=True, n_tiles=n_tiles)
        cfg = MoEConfig(per_pair=False, block_m=block_m, gemm1=g1, gemm2=g2, prequant=True)
        assert triton_moe.resident_down(triton_moe.MoEMeta(**meta), cfg, g2, meta["Ip"]) == (n_tiles > 1)
        outs.append(triton_moe.fused_moe(*args, config=cfg))
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))
    assert rel_err(outs[1], expected64(x, tw, ids, local)) < TOLERANCE[meta["quant"]]


@cuda
@pytest.mark.parametrize("name,block_m,g1,g2", [
    # gpt-oss prefill tiles (block_m 128 and 64, swap-AB, 8 and 4 warps)
    ("mxfp4_tiles_w13_only", 128, (128, 64, 8, 4, True, False), (128, 128, 4, 3, True, False)),
    ("mxfp4_swiglu_bias", 128, (128, 64, 8, 4, True, False), (128, 128, 4, 3, True, False)),
    ("mxfp4_swiglu_bias", 64, (128, 128, 4, 3, True, False), (128, 128, 4, 3, True, False)),
    # FP8 with prequant: swap-AB TMA tiles; plain tiles of block_m 128 (halves only), gemm1 of 256 gated
    # columns quantizing gemm2's input
    ("fp8_block_silu", 64, (128, 128, 4, 3, True, True), (128, 128, 4, 3, True, True)),
    ("fp8_block_silu", 128, (256, 128, 8, 3, False, True), (128, 128, 8, 3, False, True)),
    ("fp8_tensor_silu", 64, (64, 128, 4, 3, True, False), (64, 128, 4, 3, True, False)),
])
def test_tail_tiles_same_bits_gpu(name, block_m, g1, g2):
    """tail_div 4: an expert's last block whose pairs fit in block_m / 2 or / 4 rows runs that smaller tile;
    experts whose last blocks take each size (and one with a whole block before its tail): same bits as
    whole tiles, and within the format's tolerance of float64."""
    from moepack.kernels.configs import GemmConfig, MoEConfig
    from moepack.kernels.triton_moe import fused_moe, tail_tiles
    E, k = CASES[name][5], CASES[name][6]
    counts = ([12, 28, 40, 74] if block_m == 64 else [20, 60, 100, 150])[:E]
    T = tokens_for(counts, k)
    x, tw, _, local, stored, meta = make_case(name, seed=31, x_dtype=torch.bfloat16, T=T)
    ids = ids_with_counts(counts, T, k)
    args = (x.cuda(), tw.cuda(), ids.cuda(), _to(stored, "cuda"), meta)
    outs = []
    for d in (1, 4):
        gc = [GemmConfig(*g[:4], swap_ab=g[4], tma=g[5], tail_div=d) for g in (g1, g2)]
        cfg = MoEConfig(per_pair=False, block_m=block_m, gemm1=gc[0], gemm2=gc[1],
                        prequant=meta["quant"] == "fp8_block")
        # swap-AB: quarters in 8-warp programs, halves in 4-warp ones; plain block_m 128: halves
        assert [tail_tiles(cfg, g) for g in gc] == [1 if d == 1 else (4 if g[4] and g[2] == 8 else 2)
                                                    for g in (g1, g2)]
        outs.append(fused_moe(*args, config=cfg))
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))
    assert rel_err(outs[1], expected64(x, tw, ids, local)) < TOLERANCE[meta["quant"]]


@cuda
def test_shipped_tail_tiles_same_bits_at_gpt_oss_shape_gpu():
    """The table's tail tiles (gpt-oss, M = 1024 .. 16384) at the real shape (E = 128, H = I = 2880, random
    stored bytes, uniform top-4 routing): the whole tiles' bits in every one of 5 launches. A 4-warp quarter
    tile once gave NaNs in some launches only at this scale (a race; `triton_moe.tail_tiles`)."""
    import dataclasses
    from moepack.formats.model import Activation
    from moepack.kernels.configs import pick
    from moepack.kernels.triton_moe import MoEMeta, fused_moe, tail_tiles
    E, k, H, I = 128, 4, 2880, 2880
    g = torch.Generator(device="cuda").manual_seed(0)
    u8 = lambda *s, lo=0, hi=256: torch.randint(lo, hi, s, device="cuda", generator=g, dtype=torch.uint8)  # noqa: E731
    st = {"w13_weight": u8(E, 2 * I, H // 2), "w13_weight_scale": u8(E, H // 32, 2 * I, lo=118, hi=126),
          "w13_bias": torch.randn(E, 2 * I, device="cuda", generator=g) * 0.1,
          "w2_weight": u8(E, H, I // 2), "w2_weight_scale": u8(E, I // 32, H, lo=118, hi=126),
          "w2_bias": torch.randn(E, H, device="cuda", generator=g) * 0.1}
    meta = MoEMeta("mxfp4", Activation("swiglu_oai", alpha=1.702, limit=7.0), True, E, H, I, True, True)
    rep = dataclasses.replace
    for M in (1024, 4096, 16384):
        x = torch.randn(M, H, device="cuda", generator=g).to(torch.bfloat16)
        ids = torch.rand(M, E, device="cuda", generator=g).argsort(-1)[:, :k].to(torch.int32).contiguous()
        tw = torch.softmax(torch.randn(M, k, device="cuda", generator=g), -1)
        cfg = pick("mxfp4", M, E, k, H, I)
        assert tail_tiles(cfg, cfg.gemm1) > 1 and tail_tiles(cfg, cfg.gemm2) > 1
        whole = fused_moe(x, tw, ids, st, meta, config=rep(cfg, gemm1=rep(cfg.gemm1, tail_div=1),
                                                            gemm2=rep(cfg.gemm2, tail_div=1)))
        assert torch.isfinite(whole).all()
        for _ in range(5):
            assert torch.equal(fused_moe(x, tw, ids, st, meta, config=cfg).view(torch.int16),
                               whole.view(torch.int16)), M


def _few_programs(monkeypatch, persistent):
    """Persistent Gluon launches get 3 programs, so each walks several tiles (ring and barrier phases
    carried from tile to tile)."""
    from moepack.kernels import gluon_fp8
    if persistent:
        grid = gluon_fp8._grid
        monkeypatch.setattr(gluon_fp8, "_grid", lambda a, grid_m, num_n, p, programs: grid(a, grid_m, num_n, p, 3))


def _ws_config(stage, ws, persistent):
    """(MoEConfig, the GemmConfig of GEMM `stage`) for the Gluon tests: block_m 64, 256-column tiles, TMA,
    4 stages, grouped 3 blocks at a time; GEMM `stage` asks for the Gluon kernel (ws) and its persistent
    launch, the other GEMM is the plain Triton tile."""
    from moepack.kernels.configs import GemmConfig, MoEConfig
    plain = GemmConfig(block_n=256, block_k=128, num_warps=8, num_stages=4, tma=True)
    g = dataclasses.replace(plain, ws=ws, persistent=ws and persistent)
    g1, g2 = (g, plain) if stage == 1 else (plain, g)
    return MoEConfig(per_pair=False, block_m=64, gemm1=g1, gemm2=g2, prequant=True, group_m=3), g


@cuda
@pytest.mark.parametrize("ip", [256, 384])
@pytest.mark.parametrize("persistent", [False, True])
def test_ws_down_same_bits_gpu(ip, persistent, monkeypatch):
    """gemm2 by the Hopper warp-specialised Gluon kernel (`gluon_fp8.moe_down_ws`) gives the bits of
    `_moe_gemm` with the same tiles: K = Ip of two or three 128-groups (three: the single-step tail after the
    pairs), N = H = 512 (two 256-column tiles per block), 150 tokens x 2 slots over 4 experts (two blocks
    of 64 per expert, the second padded), grouped 3 blocks at a time (the last group short: tiles past N
    must not run); one program per tile, or 3 persistent programs."""
    from moepack.kernels import triton_moe
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised gemm2 runs on compute capability 9.0 only")
    _few_programs(monkeypatch, persistent)
    x, tw, ids, local, stored, meta = make_case("fp8_block_silu", seed=31, x_dtype=torch.bfloat16, Ip=ip, H=512,
                                                T=150)
    st = _to(stored, "cuda")
    outs = []
    for ws in (False, True):
        cfg, g2 = _ws_config(2, ws, persistent)
        assert triton_moe.ws_down_applies(triton_moe.MoEMeta(**meta), cfg, g2, st["w2_weight"], 512, ip) == ws
        outs.append(triton_moe.fused_moe(x.cuda(), tw.cuda(), ids.cuda(), st, meta, config=cfg))
    assert rel_err(outs[1], expected64(x, tw, ids, local)) < TOLERANCE[meta["quant"]]
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))


def _stage1(x, tw, ids, st, meta, cfg):
    """gemm1 with the quantization of its output alone -> (a2 [P, Ip] e4m3 as uint8, a2s [P, Ip/128])."""
    from moepack.kernels import triton_moe
    from moepack.kernels.align import max_blocks, moe_align
    from moepack.kernels.triton_fp8 import quantize_groups
    m = triton_moe.MoEMeta(**meta)
    T, k = ids.shape
    fl = ids.reshape(-1).to(torch.int32).contiguous()
    s, e, nb = moe_align(ids, m.E_l, cfg.block_m)
    route = (s, e, nb, fl, max_blocks(T * k, m.E_l, cfg.block_m))
    a1, a1s = quantize_groups(x)
    a2, a2s = triton_moe.stage1(x, a1, a1s, st, None, tw.reshape(-1).float().contiguous(), route, m, cfg, k, False)
    return a2.view(torch.uint8), a2s


@cuda
@pytest.mark.parametrize("ip,h,dtype", [(256, 512, torch.bfloat16), (384, 640, torch.bfloat16),
                                        (256, 512, torch.float16)])
@pytest.mark.parametrize("persistent", [False, True])
def test_ws_up_same_bits_gpu(ip, h, dtype, persistent, monkeypatch):
    """gemm1 by the Hopper warp-specialised Gluon kernel (`gluon_fp8.moe_up_ws`) writes the bits of
    `_moe_gemm` with the same tile and its quantized output (QOUT): gemm2's input a2 and its scales, and the
    layer's output. K = H of four or five 128-groups (five: the single-step tail), N = 2 Ip of two or three
    256-column tiles per block, each tile's 128 outputs quantized as one group from the maxima of both
    consumer warpgroups; 150 tokens x 2 slots over 4 experts, grouped 3 blocks at a time (a short last
    group); bfloat16 and float16 rounding of the intermediate; one program per tile, or 3 persistent
    programs (the maxima exchange's barrier phase and buffer alternate from tile to tile)."""
    from moepack.kernels import triton_moe
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised gemm1 runs on compute capability 9.0 only")
    _few_programs(monkeypatch, persistent)
    x, tw, ids, local, stored, meta = make_case("fp8_block_silu", seed=37, x_dtype=dtype, Ip=ip, H=h, T=150)
    st = _to(stored, "cuda")
    xs, tws, idss = x.cuda(), tw.cuda(), ids.cuda()
    valid = (idss.reshape(-1) >= 0)
    got = []
    for ws in (False, True):
        cfg, g1 = _ws_config(1, ws, persistent)
        assert triton_moe.ws_up_applies(triton_moe.MoEMeta(**meta), cfg, g1, st["w13_weight"], 2 * ip, h) == ws
        a2, a2s = _stage1(xs, tws, idss, st, meta, cfg)
        out = triton_moe.fused_moe(xs, tws, idss, st, meta, config=cfg)
        got.append((a2[valid], a2s[valid], out))
    assert rel_err(got[1][2], expected64(x, tw, ids, local)) < TOLERANCE[meta["quant"]]
    assert torch.equal(got[0][0], got[1][0])
    assert torch.equal(got[0][1], got[1][1])
    assert torch.equal(got[0][2].view(torch.int16), got[1][2].view(torch.int16))


@cuda
@pytest.mark.parametrize("ws_gemms", [(1, ), (2, ), (1, 2)])
@pytest.mark.parametrize("fold,persistent", [(False, False), (True, True)])
def test_ws_mxfp4_same_bits_gpu(ws_gemms, fold, persistent, monkeypatch):
    """MXFP4 gemm1 (swiglu_oai with clamp and biases) and gemm2 (bias, routed weight) by the Hopper
    warp-specialised Gluon kernel (`gluon_mxfp4.moe_mxfp4_ws`) give the bits of `_moe_gemm` with the same tile
    (block_m 128, swap-AB, 128 x 64): Ip = 192 (gemm1: 3 column tiles; gemm2: K of 3 steps), H = 256, 300
    tokens x 4 slots over 7 experts (two blocks per expert, the second partial), grouped 3 blocks at a time;
    with and without the folded scale decode; one program per tile, or 3 persistent programs."""
    from moepack.kernels import gluon_mxfp4, triton_moe
    from moepack.kernels.configs import GemmConfig, MoEConfig
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the warp-specialised MXFP4 GEMMs run on compute capability 9.0 only")
    if persistent:
        grid = gluon_mxfp4._grid
        monkeypatch.setattr(gluon_mxfp4, "_grid", lambda a, grid_m, num_n, p, programs: grid(a, grid_m, num_n, p, 3))
    x, tw, ids, local, stored, meta = make_case("mxfp4_swiglu_bias", seed=37, x_dtype=torch.bfloat16, Ip=192,
                                                H=256, T=300)
    st = _to(stored, "cuda")
    if fold:
        g = torch.Generator().manual_seed(6)
        for role in ("w13_weight_scale", "w2_weight_scale"):
            st[role] = torch.randint(110, 129, st[role].shape, generator=g, dtype=torch.int32).to(torch.uint8).cuda()
    m = dataclasses.replace(triton_moe.MoEMeta(**meta), small_scales=fold)
    plain = GemmConfig(128, 64, 8, 4, swap_ab=True)
    outs = []
    for ws in (False, True):
        g = dataclasses.replace(plain, ws=ws, persistent=ws and persistent)
        cfg = MoEConfig(per_pair=False, block_m=128, group_m=3, gemm1=g if 1 in ws_gemms else plain,
                        gemm2=g if 2 in ws_gemms else plain)
        for stage, w, n, k in ((1, "w13_weight", 384, 256), (2, "w2_weight", 256, 192)):
            want = ws and stage in ws_gemms
            assert triton_moe.ws_mxfp4_applies(m, cfg, cfg.gemm1 if stage == 1 else cfg.gemm2, stage,
                                               x.cuda(), st[w], st[w + "_scale"], n, k) == want
        outs.append(triton_moe.fused_moe(x.cuda(), tw.cuda(), ids.cuda(), st, m, config=cfg))
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))
    if not fold:
        assert rel_err(outs[1], expected64(x, tw, ids, local)) < TOLERANCE["mxfp4"]
