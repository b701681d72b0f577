"""BatchTopK (Bussmann et al. 2024): keep the `k · n` largest ReLU'd pre-activations of a batch;
a thresholded ReLU at eval (docs/internals.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsecircuits.dictionaries.activations.base import ForwardOutput, Owner
from sparsecircuits.dictionaries.activations.jumprelu import JumpReLUActivation
from sparsecircuits.dictionaries.activations.topk import TopKActivation, TopKParams

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.config import DictionaryConfig


@dataclass
class BatchTopKParams(TopKParams):
    """TopK's settings (`k` is the mean per token) and the inference threshold's EMA rate."""

    threshold_lr: float = 0.01


class BatchTopKActivation(TopKActivation):
    """Batch-level TopK in training, a fixed threshold (`threshold` buffer) at inference."""

    name = "batchtopk"
    Params = BatchTopKParams
    fused_input_bias = False
    params: BatchTopKParams
    threshold: Tensor

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64, device=cfg.device))

    def encode(self, dictionary: Owner, x_in: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """Dense codes: batch top-k (training) or thresholded ReLU (eval); AuxK selection when dead."""
        pre_acts = torch.addmm(dictionary.b_enc, x_in, dictionary.W_enc)
        acts = pre_acts.relu()
        if self.training:
            flat = acts.flatten()
            keep = flat.topk(min(self.params.k * acts.shape[0], flat.numel()), sorted=False).indices
            mask = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, keep, True).view_as(acts)
        else:
            mask = pre_acts > self.threshold.to(pre_acts.dtype)
        codes = ForwardOutput(pre_acts=pre_acts, dense_acts=acts * mask, d_sae=self.cfg.d_sae)
        return self._with_dense_aux(codes, pre_acts, dead_mask)

    @torch.no_grad()
    def observe(self, dictionary: Owner, codes: ForwardOutput) -> None:
        """EMA of the smallest positive kept activation, started at the first observation (a zero
        start, as SAELens', leaves a short run's threshold far too low; 0 = "not observed")."""
        acts = codes.feature_acts
        positive = acts[acts > 0]
        if positive.numel():
            smallest = positive.min().to(torch.float64)
            if float(self.threshold) == 0.0:
                self.threshold.copy_(smallest)
                return
            lr = self.params.threshold_lr
            self.threshold.mul_(1 - lr).add_(lr * smallest)

    saelens_architecture = JumpReLUActivation.saelens_architecture  # saved as a JumpReLU

    def extra_cfg(self) -> dict[str, object]:
        """JumpReLU needs no extra cfg fields."""
        return {}

    def saelens_weights(self) -> dict[str, Tensor]:
        """`threshold [d_sae]` filled with the scalar inference threshold, in the weights' dtype."""
        return {
            "threshold": torch.full(
                (self.cfg.d_sae,), float(self.threshold), dtype=self.cfg.torch_dtype
            )
        }

    def adopt_saelens_weights(self, tensors: dict[str, Tensor]) -> None:
        """Drop SAELens' per-latent `threshold` (our scalar comes from sparsecircuits_weights)."""
        threshold = tensors.pop("threshold", None)
        if threshold is not None and "activation.threshold" not in tensors:
            tensors["activation.threshold"] = threshold.max().to(torch.float64)
