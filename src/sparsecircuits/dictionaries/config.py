"""`DictionaryConfig`: everything needed to build (and rebuild from disk) a sparse dictionary.

Fields left at 0 / "" (or None) are filled in `__post_init__` from the architecture and kind:

* `d_out`, `hook_out`: equal `d_in`, `hook_in` for an SAE.
* `aux_k`: `d_in // 2` (sparsify's AuxK default; `k_aux` in Gao et al.); 0 turns AuxK off.
* `mp_max_iterations`: `d_in` (SAELens' default for matching-pursuit inference).
* `decoder_norm`: "unit" for the TopK family (rows of `W_dec` kept at unit norm, the gradient
  parallel to each row removed), "free" for ReLU/JumpReLU (norms free, the sparsity penalty is
  weighted by them).
* `recon_loss`: "fvu" for the TopK family (sparsify: scale-free), "mse" for ReLU/JumpReLU
  (SAELens: sum over dims, mean over tokens — so SAELens L1 coefficients carry over).
* `decoder_init_norm`: 1.0 under "unit"; 0.1 under "free" (Anthropic's April-2024 heuristic,
  also SAELens `decoder_init_norm`): a small decoder keeps the untrained output small next to the
  target, which matters most for transcoders whose target is not their input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sparsecircuits.errors import SparseCircuitsError

KINDS = ("sae", "transcoder", "skip_transcoder", "clt")
SAE_ONLY = ("topafa", "mp")  # need the input to be the target (AFA norm target; tied MP dictionary)
TOPK_FAMILY = ("topk", "batchtopk", "abstopk", "topafa", "mp")
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class DictionaryConfig:
    """Architecture, shapes, hooks and loss coefficients of one sparse dictionary.

    Zero / empty values mean "derive it" (see the module docstring); `None` is accepted for them
    too, so YAML `null` works.
    """

    architecture: str = "topk"  # relu | topk | batchtopk | jumprelu | abstopk | topafa | mp
    kind: str = "sae"  # sae | transcoder | skip_transcoder | clt (cross-layer transcoder)
    d_in: int = 0
    d_sae: int = 0
    d_out: int = 0  # 0: d_in
    hook_in: str = ""
    hook_out: str = ""  # "": hook_in
    k: int = 32
    l1_coefficient: float = 1e-3
    # ReLU / JumpReLU: > 0 starts training at this L0 (encoder bias / thresholds set from the
    # first batch's pre-activation quantiles); 0 keeps the plain init
    init_l0: float = 0.0
    aux_k: int = -1  # -1: d_in // 2; 0: AuxK off
    aux_k_coefficient: float = 1.0 / 32.0
    dead_tokens_threshold: int = 10_000_000
    model_name: str = ""
    dtype: str = "float32"
    device: str = "cpu"
    decoder_norm: str = ""  # "unit" | "free"; "": by architecture
    decoder_init_norm: float = 0.0  # 0: 1.0 under "unit", 0.1 under "free"
    recon_loss: str = ""  # "fvu" | "mse"; "": by architecture
    sparse_kernels: bool = True  # TopK: embedding-bag kernels; False = dense reference path
    # JumpReLU (Rajamanoharan et al. 2024; SAELens defaults) and the CLT penalty
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.01
    jumprelu_sparsity: str = ""  # "step" (L0) | "tanh" (Anthropic); "": tanh for clt, else step
    tanh_scale: float = 4.0
    pre_act_loss_coefficient: float = 0.0  # Anthropic's pre-activation loss on dead latents (3e-6)
    # BatchTopK: EMA rate of the inference threshold (min kept activation)
    threshold_lr: float = 0.01
    # top-AFA: weight of (||f ⊙ ||W_dec|| || - ||x - b_in||)^2; k is the cap on the per-token k
    afa_coefficient: float = 1.0 / 32.0
    # matching pursuit: train with k steps; inference stops at this residual norm / support repeat
    mp_residual_threshold: float = 1e-2
    mp_max_iterations: int = 0  # 0: d_in
    # cross-layer transcoder: number of layers; hook_in/hook_out hold "{layer}" templates
    n_layers: int = 1
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from sparsecircuits.dictionaries.activations import ACTIVATIONS

        if self.architecture not in ACTIVATIONS:
            raise SparseCircuitsError(
                f"unknown dictionary architecture {self.architecture!r}; use one of {', '.join(sorted(ACTIVATIONS))}"
            )
        if self.kind not in KINDS:
            raise SparseCircuitsError(
                f"unknown dictionary kind {self.kind!r}; use one of {', '.join(KINDS)}"
            )
        if self.d_in <= 0 or self.d_sae <= 0:
            raise SparseCircuitsError(
                f"d_in and d_sae must be positive (got d_in={self.d_in}, d_sae={self.d_sae})"
            )
        if self.kind == "sae":
            if self.d_out not in (None, 0, self.d_in):
                raise SparseCircuitsError(
                    f"an SAE reconstructs its input: d_out must equal d_in={self.d_in}"
                )
            if self.hook_out not in (None, "", self.hook_in):
                raise SparseCircuitsError(
                    "an SAE reads and writes one hook: leave hook_out unset or equal to hook_in"
                )
        if self.architecture in SAE_ONLY and self.kind != "sae":
            raise SparseCircuitsError(
                f"architecture {self.architecture!r} is for SAEs only (kind='sae')"
            )
        if self.kind == "clt" and self.n_layers < 1:
            raise SparseCircuitsError(f"n_layers must be >= 1 (got {self.n_layers})")
        self.d_out = self.d_out or self.d_in
        self.hook_out = self.hook_out or self.hook_in
        if self.d_out <= 0:
            raise SparseCircuitsError(f"d_out must be positive (got {self.d_out})")
        topk_family = self.architecture in TOPK_FAMILY
        if topk_family and not 0 < self.k <= self.d_sae:
            raise SparseCircuitsError(f"k must be in 1..d_sae={self.d_sae} (got k={self.k})")
        if self.aux_k is None or self.aux_k < 0:
            self.aux_k = max(1, self.d_in // 2)
        self.aux_k = min(self.aux_k, self.d_sae)
        self.decoder_norm = self.decoder_norm or ("unit" if topk_family else "free")
        if self.decoder_norm not in ("unit", "free"):
            raise SparseCircuitsError(
                f"decoder_norm must be 'unit' or 'free' (got {self.decoder_norm!r})"
            )
        self.recon_loss = self.recon_loss or ("fvu" if topk_family else "mse")
        if self.recon_loss not in ("fvu", "mse"):
            raise SparseCircuitsError(
                f"recon_loss must be 'fvu' or 'mse' (got {self.recon_loss!r})"
            )
        if not self.decoder_init_norm:
            self.decoder_init_norm = 1.0 if self.decoder_norm == "unit" else 0.1
        self.mp_max_iterations = self.mp_max_iterations or self.d_in
        if self.dtype not in DTYPES:
            raise SparseCircuitsError(
                f"unknown dtype {self.dtype!r}; use one of {', '.join(DTYPES)}"
            )
        self.jumprelu_sparsity = self.jumprelu_sparsity or (
            "tanh" if self.kind == "clt" else "step"
        )
        if self.jumprelu_sparsity not in ("step", "tanh"):
            raise SparseCircuitsError(
                f"jumprelu_sparsity must be 'step' or 'tanh' (got {self.jumprelu_sparsity!r})"
            )
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold <= 0:
            raise SparseCircuitsError("jumprelu_bandwidth and jumprelu_init_threshold must be > 0")
        if self.init_l0 < 0:
            raise SparseCircuitsError("init_l0 must be >= 0 (0: the plain initialisation)")
        if self.l1_coefficient < 0 or self.aux_k_coefficient < 0 or self.l0_coefficient < 0:
            raise SparseCircuitsError(
                "l1_coefficient, l0_coefficient and aux_k_coefficient must be >= 0"
            )
        if not isinstance(self.training, dict):
            raise SparseCircuitsError(
                "training must be a mapping (the training config saved with the dictionary)"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        """The `torch.dtype` named by `dtype`."""
        return DTYPES[self.dtype]

    def layer_hooks(self) -> tuple[list[str], list[str]]:
        """Input and output hook names per layer of a cross-layer transcoder (templates filled with
        `{layer}`; a hook without the placeholder is used for every layer)."""
        layers = range(self.n_layers)
        return [self.hook_in.format(layer=i) for i in layers], [
            self.hook_out.format(layer=i) for i in layers
        ]


def hook_layer(hook: str) -> int | None:
    """The layer L of a hook named `blocks.L.…`, else None."""
    parts = hook.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None
