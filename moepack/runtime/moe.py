"""`MoELayer`: one MoE layer of one rank, producing this rank's partial output.

    layer(hidden [T, H], topk_weights [T, k] float32, topk_ids [T, k] int32 GLOBAL expert ids) -> [T, H]

Summing the outputs of every rank gives the full layer, exactly what an all-reduce would produce:
- a global id the rank does not own (EP) maps to local id -1 and contributes nothing;
- TP ranks each hold a slice of the intermediate dim, so their outputs are partial sums;
- the down-projection bias `w2_bias` (replicated on every TP rank) is added by tp_rank 0 only.

Kernel paths (`Execution.kernel`, chosen by `loader.check_device`):
- "triton":     the Triton fused MoE (`moepack.kernels`), reading the stored moepack Triton layout on a GPU;
- "reference":  every stored tensor is turned back into its rank-local logical form once
                (`Chain.invert_local`, cached), then the float32 CPU reference `moe_reference` runs.
                This is the CPU path of the Triton layout and the emulation path of any other layout;
- "aiter", "flashinfer": the vendor kernels on their own hardware. NOT available in this build: calling
                the layer raises `EnvironmentError_` pointing at `allow_emulation=True`. These hooks are
                where aiter's / flashinfer's fused MoE would be called with the stored tensors as they are;
                nothing here pretends to run them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import EnvironmentError_
from ..formats.model import Activation
from ..layouts.transform import Chain

KERNELS = ("triton", "reference", "aiter", "flashinfer")

_LOCAL_FIELDS = {          # manifest role -> LocalExperts field
    "w13_weight": "w13", "w13_weight_scale": "w13_scale", "w2_weight": "w2", "w2_weight_scale": "w2_scale",
    "w13_bias": "w13_bias", "w2_bias": "w2_bias",
    "w13_input_scale": "w13_input_scale", "w2_input_scale": "w2_input_scale",
}


@dataclass(frozen=True)
class Execution:
    """How a loaded rank runs its MoE layers: `kernel` in KERNELS; `emulated` when a layout made for other
    hardware runs through the reference (`load(..., allow_emulation=True)`)."""

    kernel: str
    emulated: bool = False

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel path {self.kernel!r} (known: {', '.join(KERNELS)})")


def expert_map(experts: tuple[int, ...], num_experts: int, device) -> torch.Tensor:
    """[E] int32: global expert id -> local index on this rank, -1 where the rank does not own it."""
    m = torch.full((num_experts,), -1, dtype=torch.int32)
    m[torch.tensor(experts, dtype=torch.long)] = torch.arange(len(experts), dtype=torch.int32)
    return m.to(device)


class MoELayer:
    """One rank's experts of MoE layer `layer` (see module docstring).

    `stored`: role -> tensor in the stored kernel layout (e.g. triton mxfp4 w13_weight [E_l, 2Ip, H/2] uint8);
    `chains`: role -> the manifest's chain for that tensor; `model` / `target`: the manifest's sections."""

    def __init__(self, layer: int, stored: dict[str, torch.Tensor], chains: dict[str, Chain], model: dict,
                 target: dict, experts: tuple[int, ...], tp_rank: int, execution: Execution):
        self.layer = layer
        self.stored = stored
        self.chains = chains
        self.quant = model["quant"]
        self.activation = Activation(**model["activation"])
        self.gated = model["arrangement"] != "up_only"
        self.hidden = int(model["hidden"])
        self.num_experts = int(model["num_experts"])
        self.experts = experts
        self.tp_rank = tp_rank
        self.target = target
        self.execution = execution
        device = next(iter(stored.values())).device
        self.local_of = expert_map(experts, self.num_experts, device)    # [E] int32
        self._local = None            # LocalExperts, built on first use of the reference path
        self._triton = None           # the Triton kernel's MoEMeta, built on first use

    @property
    def add_w2_bias(self) -> bool:
        return self.tp_rank == 0

    def local_ids(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """[T, k] global ids -> [T, k] int32 local ids (-1: not on this rank)."""
        return self.local_of[topk_ids.to(self.local_of.device).long()]

    def logical(self) -> "LocalExperts":  # noqa: F821 - imported lazily
        """This rank's experts in rank-local logical form (each stored tensor's local chain inverted once, on CPU)."""
        if self._local is None:
            from ..kernels.reference import LocalExperts

            fields = {_LOCAL_FIELDS[role]: self.chains[role].invert_local(t.cpu())
                      for role, t in self.stored.items() if role in _LOCAL_FIELDS}
            self._local = LocalExperts(quant=self.quant, activation=self.activation, gated=self.gated, **fields)
        return self._local

    def __call__(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        T = hidden_states.shape[0]
        if hidden_states.dim() != 2 or hidden_states.shape[1] != self.hidden:
            raise ValueError(f"layer {self.layer}: hidden_states must be [T, {self.hidden}], "
                             f"got {tuple(hidden_states.shape)}")
        if topk_weights.shape != topk_ids.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != T:
            raise ValueError(f"layer {self.layer}: topk_weights {tuple(topk_weights.shape)} and topk_ids "
                             f"{tuple(topk_ids.shape)} must both be [T={T}, k]")
        kernel = self.execution.kernel
        if kernel == "reference":
            return self._run_reference(hidden_states, topk_weights, topk_ids)
        if kernel == "triton":
            return self._run_triton(hidden_states, topk_weights, topk_ids)
        return self._run_vendor(kernel)

    def _run_reference(self, x: torch.Tensor, w: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        from ..kernels.reference import moe_reference

        local_ids = self.local_ids(ids).cpu()
        out = moe_reference(x.cpu(), w.cpu().to(torch.float32), local_ids, self.logical(), add_w2_bias=self.add_w2_bias)
        return out.to(device=x.device, dtype=x.dtype)

    def _run_triton(self, x: torch.Tensor, w: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        from ..kernels import fused_moe

        if self._triton is None:
            from ..kernels.triton_moe import MoEMeta
            from ..kernels.triton_mxfp4 import small_scales

            rows = self.stored["w13_weight"].shape[1]          # 2*Ip gated, Ip up_only (rows kept by the layout)
            self._triton = MoEMeta(quant=self.quant, activation=self.activation, gated=self.gated,
                                   E_l=len(self.experts), H=self.hidden, Ip=rows // 2 if self.gated else rows,
                                   add_w2_bias=self.add_w2_bias,
                                   small_scales=self.quant == "mxfp4" and small_scales(
                                       self.stored.get("w13_weight_scale"), self.stored.get("w2_weight_scale")),
                                   fp4_tiles=tuple(self._fp4_tiles(role) for role in ("w13_weight", "w2_weight")))
        return fused_moe(x, w.to(torch.float32), self.local_ids(ids), self.stored, self._triton)

    def _fp4_tiles(self, role: str) -> bool:
        """Whether `role` is stored in the MXFP4 mma tiles (folders converted before they existed are not)."""
        from ..layouts.triton import ends_in_mma_tiles

        return role in self.chains and ends_in_mma_tiles(self.chains[role].local_steps)

    def _run_vendor(self, kernel: str) -> torch.Tensor:
        """Hook for aiter's / flashinfer's fused MoE on their own hardware: not wired in this build."""
        what = {"aiter": "aiter's fused MoE (ROCm)", "flashinfer": "flashinfer's CUTLASS fused MoE (CUDA)"}[kernel]
        raise EnvironmentError_(
            f"layer {self.layer}: {what} for the {self.target.get('backend')}/{self.target.get('hardware')} layout "
            f"is not available in this build (untested here); load with allow_emulation=True to run this rank "
            f"through the reference")

    def __repr__(self) -> str:
        return (f"MoELayer(layer={self.layer}, quant={self.quant}, experts={len(self.experts)}/{self.num_experts}, "
                f"tp_rank={self.tp_rank}, kernel={self.execution.kernel}{', emulated' if self.execution.emulated else ''})")
