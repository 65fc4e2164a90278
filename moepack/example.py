"""Format-exact example checkpoints: real tensor names and config keys, random but valid values.

`write_example(name, out, size="tiny", seed=0)` writes `config.json`, `generation_config.json`, a small
`tokenizer.json`, and the tensors split over several safetensors files with a
`model.safetensors.index.json`. Files are streamed: each tensor is generated in slabs along dim 0 and
written through a temp file that is renamed when complete; `config.json` is written last, so a killed
run never leaves a checkpoint that opens.

Values: FP4 codes of random normals (random bytes for big tensors), e8m0 scale codes in 118..126,
FP8 e4m3 weights from scaled normals (random non-NaN bit patterns for big tensors), positive float scales.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .errors import BadInputError
from .numerics import FP8_BLOCK, MX_BLOCK, nearest_fp4_codes, pack_fp4, quantize_fp8_e4m3

EXAMPLES = ("gpt-oss", "deepseek-v3", "qwen3-moe", "nemotron-h", "deepseek-v4")

_SLAB_ELEMS = 1 << 24          # elements generated at once (bounded memory for big sizes)
_EXACT_LIMIT = 1 << 22         # tensors up to this many elements get normal-derived values


@dataclass(frozen=True)
class Dims:
    layers: int
    experts: int
    top_k: int
    hidden: int
    inter: int                 # expert intermediate size I
    vocab: int = 256
    heads: int = 4
    head_dim: int = 16
    dense_layers: int = 0      # DeepSeek first_k_dense_replace
    dense_inter: int = 0       # intermediate size of the dense MLP layers
    shared_inter: int = 0      # shared expert intermediate size (0: none)
    n_group: int = 1
    topk_group: int = 1


_GPT_OSS = {
    "tiny": Dims(2, 8, 2, 64, 256),
    "small": Dims(2, 8, 2, 128, 288, vocab=512),                # I/32 = 9 granules: uneven at tp 2, 4, 8
    "gpt-oss-20b": Dims(24, 32, 4, 2880, 2880, vocab=201088, heads=64, head_dim=64),
    "gpt-oss-120b": Dims(2, 128, 4, 2880, 2880, vocab=201088, heads=64, head_dim=64),
}
_DEEPSEEK_V3 = {
    "tiny": Dims(3, 8, 2, 128, 256, dense_layers=1, dense_inter=384, shared_inter=256, n_group=4, topk_group=2),
    "small": Dims(3, 16, 4, 256, 640, vocab=512, dense_layers=1, dense_inter=768, shared_inter=640,
                  n_group=4, topk_group=2),
    "deepseek-v3": Dims(3, 256, 8, 7168, 2048, vocab=129280, heads=128, head_dim=128, dense_layers=1,
                        dense_inter=18432, shared_inter=2048, n_group=8, topk_group=4),
}
_QWEN3 = {
    "tiny": Dims(2, 8, 2, 128, 384, head_dim=32),               # TP2 -> 192 rows: not a multiple of 128
    "small": Dims(2, 8, 2, 256, 1536, vocab=512, head_dim=64),  # Qwen3-235B's I
    "qwen3-235b": Dims(2, 128, 8, 4096, 1536, vocab=151936, heads=64, head_dim=128),
}
_NEMOTRON = {
    "tiny": Dims(4, 8, 2, 128, 248, shared_inter=256),          # I/8 = 31: not a multiple of 16
    "small": Dims(4, 8, 2, 256, 968, vocab=512, shared_inter=512),
    "nemotron-h": Dims(4, 128, 6, 2688, 7688, vocab=131072, heads=32, head_dim=128, shared_inter=3712),
}
_DEEPSEEK_V4 = {
    "tiny": Dims(2, 8, 2, 128, 256, shared_inter=256),
    "small": Dims(2, 16, 4, 256, 640, vocab=512, shared_inter=640),
    "deepseek-v4": Dims(2, 384, 6, 7168, 3072, vocab=129280, heads=128, head_dim=128, shared_inter=3072),
}
_NEMOTRON_PATTERN = "ME*E"     # M mamba, E MoE, * attention

SIZES: dict[str, tuple[str, ...]] = {
    "gpt-oss": tuple(_GPT_OSS), "deepseek-v3": tuple(_DEEPSEEK_V3), "qwen3-moe": tuple(_QWEN3),
    "nemotron-h": tuple(_NEMOTRON), "deepseek-v4": tuple(_DEEPSEEK_V4),
}
_DIMS = {"gpt-oss": _GPT_OSS, "deepseek-v3": _DEEPSEEK_V3, "qwen3-moe": _QWEN3,
         "nemotron-h": _NEMOTRON, "deepseek-v4": _DEEPSEEK_V4}

_BITS = {"U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E8M0": 8, "BF16": 16, "F32": 32, "F4": 4}


# ---------------------------------------------------------------- value generators
@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: header dtype and shape, and how its values are made."""

    name: str
    dtype: str                 # safetensors dtype string
    shape: tuple[int, ...]     # header shape
    kind: str                  # "weight" | "norm" | "e8m0" | "scale" | "bias"

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * _BITS[self.dtype] // 8


def _slabs(shape: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Shapes of consecutive dim-0 slabs covering `shape`, each at most ~_SLAB_ELEMS elements."""
    if not shape:
        yield ()
        return
    row = prod(shape[1:]) or 1
    step = max(1, _SLAB_ELEMS // row)
    for start in range(0, shape[0], step):
        yield (min(step, shape[0] - start), *shape[1:])


def _random_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n] uint8 uniform random bytes (raw 64-bit generator output: ~2.5 GB/s)."""
    return rng.bit_generator.random_raw(-(-n // 8)).view(np.uint8)[:n]


def _values(spec: TensorSpec, shape: tuple[int, ...], gen: torch.Generator, rng: np.random.Generator,
            exact: bool) -> torch.Tensor:
    """A slab of `spec` with header shape `shape`, as a tensor whose bytes are the stored bytes."""
    d, kind = spec.dtype, spec.kind
    if kind == "norm":
        return torch.ones(shape, dtype=torch.bfloat16)
    if kind == "e8m0":
        return torch.randint(118, 127, shape, generator=gen, dtype=torch.uint8)
    if kind == "scale":        # positive float multipliers around 1e-3 .. 3e-3 (block / tensor FP8 scales)
        return (torch.rand(shape, generator=gen) * 2e-3 + 1e-3).to(torch.float32)
    if kind == "bias":
        dt = torch.bfloat16 if d == "BF16" else torch.float32
        return (torch.randn(shape, generator=gen) * 0.1).to(dt)
    # kind == "weight"
    if d in ("U8", "I8", "F4"):            # packed FP4, header shape counts bytes (U8/I8) or FP4 elements (F4)
        nbytes = prod(shape) // (2 if d == "F4" else 1)
        if exact:
            codes = nearest_fp4_codes(torch.randn(nbytes * 2, generator=gen) * 2.0)
            return pack_fp4(codes)
        return torch.from_numpy(_random_bytes(rng, nbytes))
    if d == "F8_E4M3":
        if exact:
            return quantize_fp8_e4m3(torch.randn(shape, generator=gen) * 64.0)
        b = _random_bytes(rng, prod(shape))
        b -= (b & 0x7F) == 0x7F            # 0x7F / 0xFF are NaN in e4m3fn
        return torch.from_numpy(b)
    if d == "BF16":
        if exact:
            return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        b = _random_bytes(rng, 2 * prod(shape)).view(np.uint16)
        b &= 0xBFFF                        # exponent below 128: finite, |v| < 2
        return torch.from_numpy(b)
    raise AssertionError(f"no generator for {spec}")


def _stream(spec: TensorSpec, seed: int) -> Iterator[bytes | memoryview]:
    s = (zlib.crc32(spec.name.encode()) ^ (seed * 0x9E3779B1)) & 0xFFFFFFFF
    gen = torch.Generator().manual_seed(s)
    rng = np.random.default_rng(s)
    exact = prod(spec.shape) <= _EXACT_LIMIT
    for shape in _slabs(spec.shape):
        t = _values(spec, shape, gen, rng, exact).contiguous().reshape(-1)
        yield memoryview(t.view(torch.uint8).numpy())


# ---------------------------------------------------------------- writers
def _write_safetensors(path: Path, specs: list[TensorSpec], seed: int) -> None:
    header, off = {}, 0
    for spec in specs:
        header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [off, off + spec.nbytes]}
        off += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for spec in specs:
            written = 0
            for chunk in _stream(spec, seed):
                f.write(chunk)
                written += chunk.nbytes
            assert written == spec.nbytes, (spec, written)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _tokenizer(vocab: int) -> dict:
    words = ["<unk>", "<s>", "</s>"] + [f"tok{i}" for i in range(min(vocab, 64) - 3)]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, w in enumerate(words[:3])],
        "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(words)}, "unk_token": "<unk>"},
    }


# ---------------------------------------------------------------- tensor specs per family
def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _bf16(name: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, "BF16", tuple(shape), "weight")


def _norm(name: str, n: int) -> TensorSpec:
    return TensorSpec(name, "BF16", (n,), "norm")


def _fp8_block(prefix: str, n: int, k: int, scale_suffix: str = "weight_scale_inv") -> list[TensorSpec]:
    """`{prefix}.weight [n, k] F8_E4M3` and its block scale `[ceil(n/128), ceil(k/128)] F32`."""
    return [TensorSpec(f"{prefix}.weight", "F8_E4M3", (n, k), "weight"),
            TensorSpec(f"{prefix}.{scale_suffix}", "F32", (_cdiv(n, FP8_BLOCK), _cdiv(k, FP8_BLOCK)), "scale")]


def _gpt_oss(d: Dims) -> tuple[dict, list[list[TensorSpec]]]:
    H, I, E = d.hidden, d.inter, d.experts
    q = d.heads * d.head_dim
    kv = max(1, d.heads // 8) * d.head_dim
    files = []
    for l in range(d.layers):
        p = f"model.layers.{l}"
        x = f"{p}.mlp.experts"
        files.append([
            _norm(f"{p}.input_layernorm.weight", H),
            _bf16(f"{p}.self_attn.q_proj.weight", q, H), _bf16(f"{p}.self_attn.k_proj.weight", kv, H),
            _bf16(f"{p}.self_attn.v_proj.weight", kv, H), _bf16(f"{p}.self_attn.o_proj.weight", H, q),
            _norm(f"{p}.post_attention_layernorm.weight", H),
            _bf16(f"{p}.mlp.router.weight", E, H), TensorSpec(f"{p}.mlp.router.bias", "BF16", (E,), "bias"),
            TensorSpec(f"{x}.gate_up_proj_blocks", "U8", (E, 2 * I, H // MX_BLOCK, 16), "weight"),
            TensorSpec(f"{x}.gate_up_proj_scales", "U8", (E, 2 * I, H // MX_BLOCK), "e8m0"),
            TensorSpec(f"{x}.gate_up_proj_bias", "BF16", (E, 2 * I), "bias"),
            TensorSpec(f"{x}.down_proj_blocks", "U8", (E, H, I // MX_BLOCK, 16), "weight"),
            TensorSpec(f"{x}.down_proj_scales", "U8", (E, H, I // MX_BLOCK), "e8m0"),
            TensorSpec(f"{x}.down_proj_bias", "BF16", (E, H), "bias"),
        ])
    files.append([_bf16("model.embed_tokens.weight", d.vocab, H), _norm("model.norm.weight", H),
                  _bf16("lm_head.weight", d.vocab, H)])
    config = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "hidden_size": H, "intermediate_size": I, "num_hidden_layers": d.layers,
        "num_local_experts": E, "num_experts_per_tok": d.top_k, "experts_per_token": d.top_k,
        "num_attention_heads": d.heads, "num_key_value_heads": max(1, d.heads // 8), "head_dim": d.head_dim,
        "vocab_size": d.vocab, "swiglu_limit": 7.0, "rms_norm_eps": 1e-05, "rope_theta": 150000,
        "hidden_act": "silu", "router_aux_loss_coef": 0.9, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "layer_types": ["sliding_attention" if l % 2 == 0 else "full_attention" for l in range(d.layers)],
        "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
    }
    return config, files


def _fp8_experts(x: str, E: int, H: int, I: int) -> list[TensorSpec]:
    out = []
    for e in range(E):
        out += _fp8_block(f"{x}.{e}.gate_proj", I, H) + _fp8_block(f"{x}.{e}.up_proj", I, H)
        out += _fp8_block(f"{x}.{e}.down_proj", H, I)
    return out


def _fp8_mlp(p: str, H: int, I: int) -> list[TensorSpec]:
    return _fp8_block(f"{p}.gate_proj", I, H) + _fp8_block(f"{p}.up_proj", I, H) + _fp8_block(f"{p}.down_proj", H, I)


_FP8_BLOCK_QUANT = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}


def _deepseek_v3(d: Dims) -> tuple[dict, list[list[TensorSpec]]]:
    H, I, E = d.hidden, d.inter, d.experts
    q_lora = max(64, H // 4)
    files = []
    for l in range(d.layers):
        p = f"model.layers.{l}"
        specs = [_norm(f"{p}.input_layernorm.weight", H), *_fp8_block(f"{p}.self_attn.q_a_proj", q_lora, H),
                 _norm(f"{p}.post_attention_layernorm.weight", H)]
        if l < d.dense_layers:
            specs += _fp8_mlp(f"{p}.mlp", H, d.dense_inter)
        else:
            specs += [_bf16(f"{p}.mlp.gate.weight", E, H),
                      TensorSpec(f"{p}.mlp.gate.e_score_correction_bias", "F32", (E,), "bias")]
            specs += _fp8_mlp(f"{p}.mlp.shared_experts", H, d.shared_inter)
            specs += _fp8_experts(f"{p}.mlp.experts", E, H, I)
        files.append(specs)
    files.append([_bf16("model.embed_tokens.weight", d.vocab, H), _norm("model.norm.weight", H),
                  _bf16("lm_head.weight", d.vocab, H)])
    config = {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "hidden_size": H, "intermediate_size": d.dense_inter, "moe_intermediate_size": I,
        "num_hidden_layers": d.layers, "first_k_dense_replace": d.dense_layers, "moe_layer_freq": 1,
        "n_routed_experts": E, "n_shared_experts": 1, "num_experts_per_tok": d.top_k,
        "n_group": d.n_group, "topk_group": d.topk_group, "norm_topk_prob": True, "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid", "topk_method": "noaux_tc", "hidden_act": "silu",
        "num_attention_heads": d.heads, "num_key_value_heads": d.heads, "q_lora_rank": q_lora,
        "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "vocab_size": d.vocab, "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "quantization_config": dict(_FP8_BLOCK_QUANT),
    }
    return config, files


def _qwen3_moe(d: Dims) -> tuple[dict, list[list[TensorSpec]]]:
    H, I, E = d.hidden, d.inter, d.experts
    files = []
    for l in range(d.layers):
        p = f"model.layers.{l}"
        specs = [_norm(f"{p}.input_layernorm.weight", H), *_fp8_block(f"{p}.self_attn.q_proj", d.heads * d.head_dim, H),
                 _norm(f"{p}.self_attn.q_norm.weight", d.head_dim), _norm(f"{p}.post_attention_layernorm.weight", H),
                 _bf16(f"{p}.mlp.gate.weight", E, H)]
        specs += _fp8_experts(f"{p}.mlp.experts", E, H, I)
        files.append(specs)
    files.append([_bf16("model.embed_tokens.weight", d.vocab, H), _norm("model.norm.weight", H),
                  _bf16("lm_head.weight", d.vocab, H)])
    config = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "hidden_size": H, "intermediate_size": 3 * I, "moe_intermediate_size": I, "num_hidden_layers": d.layers,
        "num_experts": E, "num_experts_per_tok": d.top_k, "norm_topk_prob": True, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "hidden_act": "silu", "num_attention_heads": d.heads,
        "num_key_value_heads": max(1, d.heads // 4), "head_dim": d.head_dim, "vocab_size": d.vocab,
        "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "quantization_config": dict(_FP8_BLOCK_QUANT),
    }
    return config, files


def _fp8_tensor(prefix: str, n: int, k: int) -> list[TensorSpec]:
    """ModelOpt FP8 per-tensor: `weight [n, k] F8_E4M3`, scalar `weight_scale` and `input_scale` F32."""
    return [TensorSpec(f"{prefix}.weight", "F8_E4M3", (n, k), "weight"),
            TensorSpec(f"{prefix}.weight_scale", "F32", (), "scale"),
            TensorSpec(f"{prefix}.input_scale", "F32", (), "scale")]


def _nemotron_h(d: Dims) -> tuple[dict, list[list[TensorSpec]]]:
    H, I, E = d.hidden, d.inter, d.experts
    pattern = (_NEMOTRON_PATTERN * d.layers)[:d.layers]
    files = []
    for l, kind in enumerate(pattern):
        p = f"backbone.layers.{l}"
        specs = [_norm(f"{p}.norm.weight", H)]
        if kind == "M":
            specs += [_bf16(f"{p}.mixer.in_proj.weight", 2 * H, H), _bf16(f"{p}.mixer.out_proj.weight", H, H),
                      TensorSpec(f"{p}.mixer.A_log", "F32", (d.heads,), "bias")]
        elif kind == "*":
            specs += [_bf16(f"{p}.mixer.q_proj.weight", d.heads * d.head_dim, H),
                      _bf16(f"{p}.mixer.o_proj.weight", H, d.heads * d.head_dim)]
        else:
            specs += [TensorSpec(f"{p}.mixer.gate.weight", "F32", (E, H), "bias"),
                      TensorSpec(f"{p}.mixer.gate.e_score_correction_bias", "F32", (E,), "bias")]
            specs += _fp8_tensor(f"{p}.mixer.shared_experts.up_proj", d.shared_inter, H)
            specs += _fp8_tensor(f"{p}.mixer.shared_experts.down_proj", H, d.shared_inter)
            for e in range(E):
                specs += _fp8_tensor(f"{p}.mixer.experts.{e}.up_proj", I, H)
                specs += _fp8_tensor(f"{p}.mixer.experts.{e}.down_proj", H, I)
        files.append(specs)
    files.append([_bf16("backbone.embeddings.weight", d.vocab, H), _norm("backbone.norm_f.weight", H),
                  _bf16("lm_head.weight", d.vocab, H)])
    config = {
        "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
        "hidden_size": H, "moe_intermediate_size": I, "moe_shared_expert_intermediate_size": d.shared_inter,
        "num_hidden_layers": d.layers, "hybrid_override_pattern": pattern,
        "n_routed_experts": E, "num_experts_per_tok": d.top_k, "n_group": d.n_group, "topk_group": d.topk_group,
        "norm_topk_prob": True, "routed_scaling_factor": 2.5, "mlp_hidden_act": "relu2",
        "num_attention_heads": d.heads, "head_dim": d.head_dim, "vocab_size": d.vocab,
        "layer_norm_epsilon": 1e-05, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": None,
                                "exclude_modules": ["lm_head", "backbone.layers.*.mixer.gate"]},
    }
    return config, files


def _deepseek_v4(d: Dims) -> tuple[dict, list[list[TensorSpec]]]:
    H, I, E = d.hidden, d.inter, d.experts
    q_lora = max(64, H // 4)
    files = []
    for l in range(d.layers):
        p = f"layers.{l}"
        specs = [_norm(f"{p}.attn_norm.weight", H), *_fp8_block(f"{p}.attn.wq_a", q_lora, H, "scale"),
                 _norm(f"{p}.ffn_norm.weight", H),
                 _bf16(f"{p}.ffn.gate.weight", E, H), TensorSpec(f"{p}.ffn.gate.bias", "F32", (E,), "bias")]
        for w, n, k in (("w1", d.shared_inter, H), ("w3", d.shared_inter, H), ("w2", H, d.shared_inter)):
            specs += _fp8_block(f"{p}.ffn.shared_experts.{w}", n, k, "scale")
        for e in range(E):
            for w, n, k in (("w1", I, H), ("w3", I, H), ("w2", H, I)):
                x = f"{p}.ffn.experts.{e}.{w}"
                specs += [TensorSpec(f"{x}.weight", "I8", (n, k // 2), "weight"),
                          TensorSpec(f"{x}.scale", "F8_E8M0", (n, k // MX_BLOCK), "e8m0")]
        files.append(specs)
    files.append([_bf16("embed.weight", d.vocab, H), _norm("norm.weight", H), _bf16("head.weight", d.vocab, H)])
    config = {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
        "hidden_size": H, "moe_intermediate_size": I, "num_hidden_layers": d.layers,
        "n_routed_experts": E, "n_shared_experts": 1, "num_experts_per_tok": d.top_k,
        "n_group": d.n_group, "topk_group": d.topk_group, "norm_topk_prob": True, "routed_scaling_factor": 1.5,
        "scoring_func": "sigmoid", "topk_method": "noaux_tc", "hidden_act": "silu", "swiglu_limit": 10.0,
        "num_attention_heads": d.heads, "q_lora_rank": q_lora, "head_dim": d.head_dim, "vocab_size": d.vocab,
        "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "deepseek_v4_fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                "weight_block_size": [128, 128], "expert_dtype": "fp4"},
    }
    return config, files


_BUILDERS: dict[str, Callable[[Dims], tuple[dict, list[list[TensorSpec]]]]] = {
    "gpt-oss": _gpt_oss, "deepseek-v3": _deepseek_v3, "qwen3-moe": _qwen3_moe,
    "nemotron-h": _nemotron_h, "deepseek-v4": _deepseek_v4,
}


def example_dims(name: str, size: str = "tiny") -> Dims:
    """The dimensions of an example (BadInputError for an unknown name or size)."""
    if name not in _DIMS:
        raise BadInputError(f"unknown example {name!r} (valid: {', '.join(EXAMPLES)})")
    if size not in _DIMS[name]:
        raise BadInputError(f"unknown size {size!r} for example {name} (valid: {', '.join(SIZES[name])})")
    return _DIMS[name][size]


def example_specs(name: str, size: str = "tiny") -> tuple[dict, list[list[TensorSpec]]]:
    """(config, tensors per file) of an example, without writing anything."""
    dims = example_dims(name, size)
    return _BUILDERS[name](dims)


def write_example(name: str, out: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """Write example checkpoint `name` of `size` into folder `out` (created); returns the folder."""
    config, files = example_specs(name, size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = out / "config.json"
    if stale.exists():
        stale.unlink()                     # the folder is not a valid checkpoint until we finish
    n = len(files)
    weight_map, total = {}, 0
    for i, specs in enumerate(files):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        _write_safetensors(out / fname, specs, seed)
        for spec in specs:
            weight_map[spec.name] = fname
            total += spec.nbytes
    _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    _write_json(out / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False})
    _write_json(out / "tokenizer.json", _tokenizer(config["vocab_size"]))
    _write_json(out / "config.json", {**config, "moepack_example": {"name": name, "size": size, "seed": seed}})
    return out


__all__ = ["EXAMPLES", "SIZES", "Dims", "TensorSpec", "example_dims", "example_specs", "write_example"]
