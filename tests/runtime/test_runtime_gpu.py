"""On a CUDA GPU, the triton layout runs through the Triton fused MoE: summing the ranks' bf16 outputs
matches the float64 layer computed from the source checkpoint within the kernel tolerance."""
from __future__ import annotations

import pytest
import torch

from moepack.example import EXAMPLES
from moepack.formats.assemble import read_canonical
from moepack.formats.detect import describe
from moepack.kernels.reference import TOLERANCE
from moepack.runtime import load
from moepack.kernels.dense_reference import dense_moe_float64
from moepack.runtime.smoke import run_smoke
from moepack.source.checkpoint import Checkpoint

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.version.hip is not None,
                                 reason="needs a CUDA GPU")]


@pytest.mark.parametrize("tp,ep", [(1, 1), (2, 1), (2, 2)])
@pytest.mark.parametrize("name", EXAMPLES)
def test_triton_rank_sum_matches_source_float64(name, tp, ep, converted, example_ckpt):
    ckpt = Checkpoint.open(example_ckpt(name))
    spec = describe(ckpt).moe_layers[0]
    canonical = {role: read_canonical(ckpt, ct) for role, ct in spec.tensors.items()}
    g = torch.Generator().manual_seed(tp + ep)
    T, k = 33, 2
    x = torch.randn(T, spec.hidden, generator=g).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(spec.num_experts, generator=g)[:k] for _ in range(T)]).to(torch.int32)
    w = torch.softmax(torch.randn(T, k, generator=g), -1)
    ref = dense_moe_float64(x.float(), w, ids, canonical, spec.quant, spec.arrangement, spec.activation,
                            static_input_scales=True)     # fp8_tensor: the checkpoint's static activation scales
    folder = converted(name, tp=tp, ep=ep)
    got = torch.zeros_like(ref)
    for r in range(tp):
        ck = load(folder, rank=r, device="cuda")
        assert ck.execution.kernel == "triton" and ck.tensors[next(iter(ck.tensors))].is_cuda
        got += ck.moe_layers[spec.index](x.cuda(), w.cuda(), ids.cuda()).double().cpu()
    assert float((got - ref).norm() / ref.norm()) < TOLERANCE[spec.quant]


@pytest.mark.parametrize("name", EXAMPLES)
def test_smoke_on_cuda(converted, name):
    rows = run_smoke(converted(name, tp=2), tokens=16, device="cuda")
    assert rows and all(r["ok"] and r["kernel"] == "triton" for r in rows)
