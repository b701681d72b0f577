"""ReLU + L1: `f = ReLU((x - b_in) W_enc + b_enc)`, penalty `λ · mean_tokens Σ_i f_i ||W_dec[i]||`
(decoder-norm-weighted, so decoder norms stay free; docs/internals.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsecircuits.dictionaries import sparse_step
from sparsecircuits.dictionaries.activations.base import (
    Activation,
    ActivationParams,
    ForwardOutput,
    Owner,
    firing_quantiles,
    require_nonnegative,
)

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.config import DictionaryConfig


@dataclass
class ReLUParams(ActivationParams):
    """The L1 coefficient and the starting L0."""

    tag_format = "l1-{l1_coefficient:g}"
    l1_coefficient: float = 1e-3
    # > 0: start training at this L0 (encoder bias set from the first batch's pre-activation
    # quantiles); 0 keeps the plain init
    init_l0: float = 0.0

    def resolve(self, cfg: DictionaryConfig) -> None:
        """Both settings must be >= 0."""
        require_nonnegative(self, "l1_coefficient", "init_l0")


class ReLUActivation(Activation):
    """ReLU with a decoder-norm-weighted L1 penalty (`l1_coefficient`)."""

    name = "relu"
    Params = ReLUParams
    params: ReLUParams
    step_mode: str | None = None  # "sparse" | "dense": how the last train step ran

    def encode(self, dictionary: Owner, x_in: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """Dense codes `relu(x_in @ W_enc + b_enc)` (pre-activations not kept: the ReLU's
        backward needs only its output, so `[n, d_sae]` of memory is freed at once)."""
        pre_acts = sparse_step.pre_activations(x_in, dictionary.W_enc, dictionary.b_enc)
        return ForwardOutput(dense_acts=torch.relu(pre_acts), d_sae=self.cfg.d_sae)

    def encode_input(self, dictionary: Owner, x: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """`encode(x - b_in)`; in a train step, row-sparse once few latents are active
        (`sparse_step`: the kept entries are the positive pre-activations)."""
        if not sparse_step.applies(dictionary, x):
            return super().encode_input(dictionary, x, dead_mask)
        codes, self.step_mode = sparse_step.switched_encode(
            dictionary,
            x,
            dictionary.b_enc.new_zeros(self.cfg.d_sae),
            dense=lambda x_in: self.encode(dictionary, x_in, dead_mask),
            sparse=lambda pre, pattern: sparse_step.RowSparseOutput(
                acts=torch.relu(pre), pattern=pattern, kept_pre=pre, d_sae=self.cfg.d_sae
            ),
        )
        return codes

    @torch.no_grad()
    def init_from_data(self, dictionary: Owner, x_in: Tensor) -> None:
        """With `init_l0 > 0`, lower each encoder bias by the pre-activation quantile of
        `x_in [n, d_in]` where the latent fires on `init_l0 / d_sae` of the tokens."""
        if self.params.init_l0 > 0:
            dictionary.b_enc.sub_(firing_quantiles(dictionary, x_in, self.params.init_l0))

    def sparsity_loss(
        self, dictionary: Owner, codes: ForwardOutput, dead_mask: Tensor | None
    ) -> Tensor:
        """`l1_coefficient · mean_tokens Σ_i f_i ||W_dec[i]||` (gradient reaches W_dec norms too)."""
        return self.params.l1_coefficient * codes.weighted_l1(dictionary.W_dec.norm(dim=1))

    def saelens_architecture(self) -> str | None:
        """ "standard" for SAEs, "transcoder" / "skip_transcoder" for transcoders."""
        return {
            "sae": "standard",
            "transcoder": "transcoder",
            "skip_transcoder": "skip_transcoder",
        }[self.cfg.kind]
