"""The model description every later stage reads: what the MoE layers of a checkpoint are.

A format module (`gpt_oss.py`, `deepseek_fp8.py`, ...) turns a checkpoint into a `ModelDescription`.
Everything after that (layouts, convert, verify, runtime) speaks only in these terms.

Canonical tensors
-----------------
Per MoE layer, the experts are described by up to eight *canonical tensors*, all with experts on dim 0:

| role              | mxfp4                   | fp8_block                              | fp8_tensor     |
| ----------------- | ----------------------- | -------------------------------------- | -------------- |
| w13_weight        | [E, R, H/2] uint8       | [E, R, H] float8_e4m3fn                | same as block  |
| w13_weight_scale  | [E, R, H/32] uint8 e8m0 | [E, RB, ceil(H/128)] float32           | [E, S] float32 |
| w13_bias          | [E, R] (source dtype)   | -                                      | -              |
| w2_weight         | [E, H, I/2] uint8       | [E, H, I] float8_e4m3fn                | same           |
| w2_weight_scale   | [E, H, I/32] uint8 e8m0 | [E, ceil(H/128), ceil(I/128)] float32  | [E, 1] float32 |
| w2_bias           | [E, H]                  | -                                      | -              |
| w13_input_scale   | -                       | -                                      | [E, S] float32 |
| w2_input_scale    | -                       | -                                      | [E, 1] float32 |

R = 2I when gated (gate and up rows, in the source's `arrangement`), I when not gated (`up_only`).
RB = 2*ceil(I/128) (gate blocks then up blocks) when gated. S = 2 (gate, up scalars) when gated, else 1.
Dim 1 of every w13 tensor is the "rows" dim that holds gate/up halves; dim -1 of w2 tensors is I.

A canonical tensor is assembled from source tensors by `SourcePiece`s: piece p says
`canonical[e, rows[0]:rows[1], ...]` (or `canonical[:, rows[0]:rows[1], ...]` when `expert is None`)
reshaped to `shape` and viewed as `dtype` is, byte for byte, the source tensor `name`.
This assembly is exact and invertible: it is how `verify` reconstructs every source tensor.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

QuantScheme = Literal["mxfp4", "fp8_block", "fp8_tensor"]
Arrangement = Literal["interleaved", "separate", "up_only"]
"""How the SOURCE stores gate/up rows of w13:
- interleaved: rows (2j, 2j+1) = (gate_j, up_j)  (gpt-oss `gate_up_proj`);
- separate:    [gate_all; up_all] (separate w1/w3 or gate_proj/up_proj tensors, concatenated gate first);
- up_only:     not gated, only up rows (NemotronH relu2)."""

ROLES = (
    "w13_weight", "w13_weight_scale", "w13_bias",
    "w2_weight", "w2_weight_scale", "w2_bias",
    "w13_input_scale", "w2_input_scale",
)


@dataclass(frozen=True)
class Activation:
    """The expert activation between the two GEMMs.

    - "swiglu_oai" (gpt-oss): g = min(gate, limit); u = clamp(up, -limit, limit); g * sigmoid(alpha * g) * (u + 1).
    - "silu":  silu(gate) * up; with `limit`: gate clamped to max `limit`, up to [-limit, limit] first (DeepSeek-V4).
    - "relu2": relu(up) ** 2 (not gated; NemotronH).
    """

    kind: Literal["swiglu_oai", "silu", "relu2"]
    alpha: float | None = None
    limit: float | None = None

    @property
    def gated(self) -> bool:
        return self.kind != "relu2"

    @classmethod
    def from_json(cls, d: dict) -> "Activation":
        """From its manifest form (`dataclasses.asdict`)."""
        return cls(kind=d["kind"], alpha=d.get("alpha"), limit=d.get("limit"))


@dataclass(frozen=True)
class Routing:
    """How router logits become (topk_weights, topk_ids).

    - "topk_softmax" (gpt-oss): top-k on logits (+ router bias), then softmax over the k.
    - "softmax_topk" (Qwen3-MoE): softmax over all experts, top-k, renormalise if `norm_topk_prob`.
    - "sigmoid_noaux" (DeepSeek-V3/V4, NemotronH): sigmoid scores; selection on scores + e_score_correction_bias,
      group-limited (`n_group`, `topk_group`); weights from the un-biased scores, renormalised if
      `norm_topk_prob`, times `routed_scaling_factor`.
    """

    kind: Literal["topk_softmax", "softmax_topk", "sigmoid_noaux"]
    top_k: int
    norm_topk_prob: bool = True
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    router_weight: str | None = None       # source tensor name of the router weight
    router_bias: str | None = None         # gpt-oss router bias / DeepSeek e_score_correction_bias
    # router_weight / router_bias are templates with a `{layer}` field: see `router_names`.

    def router_names(self, layer: int) -> tuple[str | None, str | None]:
        """(router weight, router bias) source tensor names of MoE layer `layer`."""
        fill = lambda t: t.format(layer=layer) if t is not None else None  # noqa: E731
        return fill(self.router_weight), fill(self.router_bias)


@dataclass(frozen=True)
class SourcePiece:
    """One source tensor and where it sits inside a canonical tensor (see module docstring)."""

    name: str
    expert: int | None
    rows: tuple[int, int]
    shape: tuple[int, ...]
    dtype: str                     # safetensors dtype string of the source tensor, e.g. "U8", "F8_E4M3", "BF16"


@dataclass(frozen=True)
class CanonicalTensor:
    role: str                      # one of ROLES
    shape: tuple[int, ...]
    dtype: str                     # torch dtype name of the canonical tensor, e.g. "uint8", "float8_e4m3fn"
    pieces: tuple[SourcePiece, ...]


@dataclass(frozen=True)
class MoELayerSpec:
    index: int                     # layer index in the model
    num_experts: int               # E
    hidden: int                    # H
    intermediate: int              # I (per expert, unsharded)
    quant: QuantScheme
    arrangement: Arrangement
    activation: Activation
    has_bias: bool
    tensors: dict[str, CanonicalTensor]   # role -> canonical tensor

    @property
    def gated(self) -> bool:
        return self.arrangement != "up_only"


@dataclass(frozen=True)
class ModelDescription:
    family: str                    # "gpt-oss-mxfp4" | "deepseek-v3-fp8" | "qwen3-moe-fp8" | "modelopt-fp8" | "deepseek-v4-mxfp4"
    quant: QuantScheme
    num_layers: int
    moe_layers: tuple[MoELayerSpec, ...]
    routing: Routing
    passthrough: tuple[str, ...]   # every non-expert tensor name (attention, norms, routers, embeddings, shared experts)
    config: dict = field(default_factory=dict, compare=False)   # config.json as read

    def layer(self, index: int) -> MoELayerSpec:
        for spec in self.moe_layers:
            if spec.index == index:
                return spec
        raise KeyError(index)

    def summary(self) -> dict:
        """JSON-able summary (what `inspect --json` prints under "model")."""
        first = self.moe_layers[0] if self.moe_layers else None
        return {
            "family": self.family,
            "quant": self.quant,
            "num_layers": self.num_layers,
            "moe_layers": [s.index for s in self.moe_layers],
            "num_experts": first.num_experts if first else 0,
            "hidden": first.hidden if first else 0,
            "intermediate": first.intermediate if first else 0,
            "arrangement": first.arrangement if first else None,
            "has_bias": first.has_bias if first else False,
            "activation": asdict(first.activation) if first else None,
            "routing": asdict(self.routing),
            "passthrough": len(self.passthrough),
        }
