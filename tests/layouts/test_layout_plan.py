"""plan_layer and the target registry: every registered chain round-trips bit-exactly and survives
JSON; validation errors; the block-aligned FP8 split is exact; the seed bugs cannot happen."""
from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from layout_cases import bytes_equal, make_spec, random_canonical

from moepack.errors import PlanError
from moepack.layouts import Chain, get_target, list_targets, plan_layer, rank_local_shapes, stored_shapes
from moepack.layouts.generic import DeinterleaveGateUp
from moepack.numerics import dequant_fp8_block, dequant_mxfp4

TARGETS = list_targets()


def _arrangements(quant):
    return ["interleaved", "separate"] if quant == "mxfp4" else ["separate", "up_only"]


@settings(max_examples=40, deadline=None)
@given(ti=st.integers(0, len(TARGETS) - 1), data=st.data())
def test_every_registered_chain_roundtrips(ti, data):
    target = TARGETS[ti]
    q = target.quant
    arr = data.draw(st.sampled_from(_arrangements(q)))
    E = data.draw(st.sampled_from([2, 4]))
    tp = data.draw(st.sampled_from([1, 2, 3, 4]))
    ep = data.draw(st.sampled_from([d for d in (1, 2, 4) if tp % d == 0 and E % d == 0]))
    tpl = tp // ep
    if q == "mxfp4":
        I, H = 32 * data.draw(st.integers(tpl, tpl + 3)), data.draw(st.sampled_from([64, 128]))
    elif q == "fp8_block":
        I, H = data.draw(st.sampled_from([128, 200, 384])), data.draw(st.sampled_from([64, 160]))
    else:
        I, H = data.draw(st.integers(tpl, 40)), data.draw(st.sampled_from([32, 64]))
    spec = make_spec(q, E=E, H=H, I=I, arrangement=arr, bias=data.draw(st.booleans()))
    plan = plan_layer(spec, target, tp, ep)
    local = rank_local_shapes(spec, plan)
    stored = stored_shapes(spec, plan)
    src = random_canonical(spec, seed=data.draw(st.integers(0, 9999)))
    for role, x in src.items():
        chain = plan.chains[role]
        again = Chain.from_json(json.loads(json.dumps(chain.to_json())))
        assert again == chain
        parts = chain.apply(x)
        assert len(parts) == tp and chain.num_parts == tp
        for p in parts:
            assert (tuple(p.shape), p.dtype) == stored[role]
            assert tuple(chain.invert_local(p).shape) == local[role]
            assert bytes_equal(chain.apply_local(chain.invert_local(p)), p)
        assert bytes_equal(chain.invert(parts), chain.canonicalize(x))


def test_rank_local_logical_form():
    spec = make_spec("mxfp4", E=4, H=128, I=96, arrangement="interleaved", bias=True)
    plan = plan_layer(spec, get_target("aiter", "mi355x", "mxfp4"), 4, 2)
    Ip = plan.intermediate_padded
    assert Ip == 256 and plan.intermediate_per_rank == [64, 32]
    assert rank_local_shapes(spec, plan) == {
        "w13_weight": (2, 2 * Ip, 64), "w13_weight_scale": (2, 2 * Ip, 4), "w13_bias": (2, 2 * Ip),
        "w2_weight": (2, 128, Ip // 2), "w2_weight_scale": (2, 128, Ip // 32), "w2_bias": (2, 128)}
    assert [(r.rank, r.ep_rank, r.tp_rank, r.experts, r.rows) for r in plan.ranks] == [
        (0, 0, 0, (0, 1), (0, 64)), (1, 0, 1, (0, 1), (64, 96)),
        (2, 1, 0, (2, 3), (0, 64)), (3, 1, 1, (2, 3), (64, 96))]


@pytest.mark.parametrize("backend,hw,quant,variant,arr,I,tp,Ip", [
    ("aiter", "mi355x", "mxfp4", "interleave", "interleaved", 2880, 8, 512),     # 360 -> 256-multiple
    ("aiter", "mi355x", "mxfp4", "separated", "separate", 2880, 8, 384),         # 360 -> 128-multiple
    ("flashinfer-cutlass", "h100", "fp8_tensor", None, "up_only", 7688, 8, 976),  # NemotronH 961 -> 16-multiple
    ("aiter", "mi300x", "fp8_block", None, "separate", 1536, 8, 256),            # 192 rows over 2 blocks
    ("triton", "h100", "fp8_block", None, "separate", 1536, 4, 384),
])
def test_padded_sizes(backend, hw, quant, variant, arr, I, tp, Ip):
    spec = make_spec(quant, E=1, H=64, I=I, arrangement=arr)
    plan = plan_layer(spec, get_target(backend, hw, quant, variant), tp, 1)
    assert plan.intermediate_padded == Ip
    assert sum(plan.intermediate_per_rank) == I
    assert plan.padding_fraction == pytest.approx(1 - I / (tp * Ip))


def test_plan_validation():
    spec = make_spec("mxfp4", E=4, H=64, I=64)
    t = get_target("triton", "h100", "mxfp4")
    with pytest.raises(PlanError, match="ep"):
        plan_layer(spec, t, 4, 3)                       # ep does not divide tp
    with pytest.raises(PlanError, match="experts"):
        plan_layer(make_spec("mxfp4", E=3, H=64, I=64), t, 2, 2)
    with pytest.raises(PlanError, match="cannot split"):
        plan_layer(spec, t, 4, 1)                       # 2 granules of 32 over 4 ranks
    with pytest.raises(PlanError, match="granule"):
        plan_layer(make_spec("mxfp4", E=4, H=64, I=48), t, 1, 1)
    with pytest.raises(PlanError, match="fp8_tensor"):
        plan_layer(spec, get_target("triton", "h100", "fp8_tensor"), 1, 1)
    with pytest.raises(PlanError, match="interleaved"):
        plan_layer(make_spec("fp8_block", I=128, arrangement="interleaved"), get_target("triton", "h100", "fp8_block"), 1, 1)
    with pytest.raises(PlanError, match="w2_weight"):   # AITER shuffle needs H % 16 on w2 rows
        plan_layer(make_spec("fp8_tensor", E=2, H=40, I=32), get_target("aiter", "mi300x", "fp8_tensor"), 1, 1)


def test_get_target_refuses_with_supported_list():
    assert get_target("aiter", "mi355x", "mxfp4").variant == "interleave"
    assert get_target("aiter", "MI355X", "mxfp4", "separated").alignment == 128
    with pytest.raises(PlanError) as e:
        get_target("aiter", "mi300x", "mxfp4")
    # the message lists the supported targets for the model's quant scheme, and only those
    msg = str(e.value)
    assert "aiter: mi355x[interleave], mi355x[separated]" in msg and "triton: h100" in msg
    assert "flashinfer-cutlass" not in msg
    with pytest.raises(PlanError):
        get_target("flashinfer-cutlass", "h100", "mxfp4")
    keys = [(t.backend, t.hardware, t.quant, t.variant) for t in TARGETS]
    assert len(keys) == len(set(keys))
    for t in TARGETS:   # exactly one default per (backend, hardware, quant)
        assert sum(u.default for u in TARGETS if (u.backend, u.hardware, u.quant) == (t.backend, t.hardware, t.quant)) == 1


def test_arrangement_prefix():
    """Only an interleaved source is de-interleaved, once (the DeepSeek-V4 double de-interleave bug)."""
    t = get_target("aiter", "mi355x", "mxfp4", "separated")
    for arr, n in (("interleaved", 1), ("separate", 0)):
        plan = plan_layer(make_spec("mxfp4", E=2, H=64, I=64, arrangement=arr, bias=True), t, 2, 1)
        for role, chain in plan.chains.items():
            k = sum(isinstance(s, DeinterleaveGateUp) for s in chain.steps)
            assert k == (n if role.startswith("w13") else 0), (arr, role)


def test_tp_offsets_from_unpadded_sizes_vllm_42595():
    """I=2880 = 90 granules of 32 over 8 ranks: 12, 12, 11 x 6 granules, padded to 384. The last rank
    holds the LAST source rows 2528..2879 (offsets from padded sizes would start it at 7 * 384 = 2688)."""
    I, H = 2880, 64
    spec = make_spec("mxfp4", E=1, H=H, I=I, arrangement="separate")
    plan = plan_layer(spec, get_target("aiter", "mi355x", "mxfp4", "separated"), 8, 1)
    assert plan.intermediate_padded == 384
    assert plan.intermediate_per_rank == [384, 384] + [352] * 6
    assert plan.ranks[-1].rows == (2528, 2880)
    src = random_canonical(spec, seed=5)
    src["w2_weight_scale"] = torch.randint(110, 140, src["w2_weight_scale"].shape, dtype=torch.uint8)  # no NaN codes
    for role in ("w13_weight", "w13_weight_scale"):
        chain = plan.chains[role]
        last = chain.invert_local(chain.apply(src[role])[-1])
        for h in range(2):
            assert bytes_equal(last[:, h * 384:h * 384 + 352], src[role][:, h * I + 2528:h * I + 2880])
            pad = 127 if role.endswith("scale") else 0
            assert bool((last[:, h * 384 + 352:(h + 1) * 384] == pad).all())
    w2 = plan.chains["w2_weight"]
    last = w2.invert_local(w2.apply(src["w2_weight"])[-1])
    assert bytes_equal(last[:, :, :176], src["w2_weight"][:, :, 1264:1440])
    # the dequantized last rank equals the source's last 352 intermediate columns of w2, then zeros
    s2 = plan.chains["w2_weight_scale"]
    last_s = s2.invert_local(s2.apply(src["w2_weight_scale"])[-1])
    deq = dequant_mxfp4(last, last_s)
    ref = dequant_mxfp4(src["w2_weight"], src["w2_weight_scale"])
    assert torch.equal(deq[..., :352], ref[..., 2528:]) and not deq[..., 352:].any()


@pytest.mark.parametrize("I,tp,target", [(1536, 8, ("aiter", "mi300x")), (384, 2, ("aiter", "mi355x")),
                                         (1536, 8, ("triton", "h100")), (384, 2, ("triton", "mi300x"))])
def test_block_aligned_split_dequantizes_exactly(I, tp, target):
    H = 256
    spec = make_spec("fp8_block", E=1, H=H, I=I)
    plan = plan_layer(spec, get_target(*target, "fp8_block"), tp, 1)
    Ip = plan.intermediate_padded
    assert Ip == 256     # 192 rows always straddle exactly two 128-blocks
    src = random_canonical(spec, seed=3)
    ref13 = dequant_fp8_block(src["w13_weight"], src["w13_weight_scale"])
    ref2 = dequant_fp8_block(src["w2_weight"], src["w2_weight_scale"])
    logical = {role: [plan.chains[role].invert_local(p) for p in plan.chains[role].apply(src[role])]
               for role in src}
    for r, info in enumerate(plan.ranks):
        a, b = info.rows
        off = a % 128
        assert info.local_start == off
        w13 = logical["w13_weight"][r]
        s13 = logical["w13_weight_scale"][r]
        if w13.dtype == torch.float8_e4m3fnuz:          # gfx942: fnuz bytes are half, scales doubled
            w13 = w13.view(torch.uint8).view(torch.float8_e4m3fn)
            s13 = s13 / 2
        d13 = dequant_fp8_block(w13, s13)
        for h in range(2):
            got = d13[:, h * Ip:(h + 1) * Ip]
            assert torch.equal(got[:, off:off + b - a], ref13[:, h * I + a:h * I + b])
            assert not got[:, :off].any() and not got[:, off + b - a:].any()    # inserted / padding rows are zero
        w2, s2 = logical["w2_weight"][r], logical["w2_weight_scale"][r]
        if w2.dtype == torch.float8_e4m3fnuz:
            w2, s2 = w2.view(torch.uint8).view(torch.float8_e4m3fn), s2 / 2
        d2 = dequant_fp8_block(w2, s2)
        assert torch.equal(d2[..., off:off + b - a], ref2[..., a:b])
        assert not d2[..., :off].any() and not d2[..., off + b - a:].any()


def test_fnuz_chain_is_exact_up_to_negative_zero():
    spec = make_spec("fp8_tensor", E=2, H=32, I=32)
    plan = plan_layer(spec, get_target("aiter", "mi300x", "fp8_tensor"), 2, 1)
    x = random_canonical(spec, seed=1)["w13_weight"]
    x.view(torch.uint8)[0, 0, 0] = 0x80
    chain = plan.chains["w13_weight"]
    back = chain.invert(chain.apply(x))
    assert not bytes_equal(back, x)
    assert bytes_equal(back, chain.canonicalize(x))
    assert torch.equal(back.float(), x.float())         # same values
    assert any("e4m3fnuz" in w for w in plan.warnings)


def test_list_targets_cover_the_issue():
    combos = {(t.backend, t.hardware) for t in TARGETS}
    for hw in ("h100", "h200", "b200", "mi300x", "mi325x", "mi355x"):
        assert ("triton", hw) in combos
    for hw in ("mi300x", "mi325x", "mi355x"):
        assert ("aiter", hw) in combos
    for hw in ("h100", "h200", "b200"):
        assert ("flashinfer-cutlass", hw) in combos
    assert {t.arch for t in TARGETS if t.hardware in ("mi300x", "mi325x")} == {"gfx942"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("key", [("aiter", "mi355x", "mxfp4", "interleave"), ("aiter", "mi300x", "fp8_block", None),
                                 ("flashinfer-cutlass", "h100", "fp8_tensor", None), ("triton", "h100", "mxfp4", None)])
def test_chains_on_gpu_match_cpu(key):
    backend, hw, quant, variant = key
    spec = make_spec(quant, E=2, H=128, I=384 if quant == "fp8_block" else 64, bias=quant == "mxfp4",
                     arrangement="interleaved" if quant == "mxfp4" else "separate")
    plan = plan_layer(spec, get_target(backend, hw, quant, variant), 2, 1)
    for role, x in random_canonical(spec, seed=2).items():
        chain = plan.chains[role]
        cpu = chain.apply(x)
        gpu = chain.apply(x.cuda())
        assert all(bytes_equal(c, g.cpu()) for c, g in zip(cpu, gpu))
        assert bytes_equal(chain.invert(gpu).cpu(), chain.canonicalize(x))
