"""TopK (Gao et al. 2024, sparsify): keep the k largest pre-activations per token, then ReLU
(`topk_relu=False`: circuit-tracer's TopK, signs kept); AuxK revives dead latents
(docs/internals.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from sparsecircuits.dictionaries import kernels
from sparsecircuits.dictionaries.activations.base import (
    Activation,
    ActivationParams,
    ForwardOutput,
    Owner,
)
from sparsecircuits.dictionaries.squared_error import squared_sum
from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.config import DictionaryConfig


def check_k(k: int, d_sae: int) -> None:
    """Raise `SparseCircuitsError` unless `1 <= k <= d_sae`."""
    if not 0 < k <= d_sae:
        raise SparseCircuitsError(f"k must be in 1..d_sae={d_sae} (got k={k})")


@dataclass
class TopKParams(ActivationParams):
    """Settings of the TopK family."""

    tag_format = "k{k}"
    k: int = 32  # latents kept per token
    aux_k: int = -1  # AuxK latents per token (k_aux); -1: d_in // 2 (sparsify's default); 0: off
    # False: no ReLU after the selection (circuit-tracer's TopK; architecture "topk" only)
    topk_relu: bool = True

    def resolve(self, cfg: DictionaryConfig) -> None:
        """Check `k` and `topk_relu`; fill `aux_k` from `d_in`, at most `d_sae`."""
        check_k(self.k, cfg.d_sae)
        if not self.topk_relu and cfg.architecture != "topk":
            raise SparseCircuitsError(
                f"topk_relu=false is a setting of architecture 'topk' only (got {cfg.architecture!r})"
            )
        if self.aux_k is None or self.aux_k < 0:
            self.aux_k = max(1, cfg.d_in // 2)
        self.aux_k = min(self.aux_k, cfg.d_sae)


class TopKActivation(Activation):
    """TopK then ReLU on the sparse kernels (`kernels.topk_encode`), AuxK for dead latents."""

    name = "topk"
    Params = TopKParams
    default_decoder_norm = "unit"
    default_recon_loss = "fvu"
    signed = False
    # True: `encode` is this class's kernel path, which takes `b_in` itself (its gradient then
    # skips the input gradient); a subclass with its own `encode` sets False
    fused_input_bias = True
    params: TopKParams

    def encode(self, dictionary: Owner, x_in: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """Sparse codes `values, indices [n, k]` (+ AuxK selection when `dead_mask` has dead latents)."""
        if not self.params.topk_relu:
            return self._encode_signed_values(dictionary, x_in, dead_mask)
        return self._encode(dictionary, x_in, dead_mask, None)

    def encode_input(self, dictionary: Owner, x: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """`encode(x - b_in)`, with `b_in` handed to the kernel under `fused_input_bias`."""
        if not self.fused_input_bias or not self.params.topk_relu:
            return super().encode_input(dictionary, x, dead_mask)
        return self._encode(dictionary, x, dead_mask, dictionary.b_in)

    def _encode_signed_values(
        self, dictionary: Owner, x_in: Tensor, dead_mask: Tensor | None
    ) -> ForwardOutput:
        """`topk_relu=False`: the k largest pre-activations, values kept as they are (dense
        autograd; AuxK from the same pre-activations)."""
        pre_acts = kernels.pre_activations(x_in, dictionary.W_enc, dictionary.b_enc)
        values, indices = pre_acts.topk(self.params.k, dim=-1, sorted=False)
        codes = ForwardOutput(values=values, indices=indices, d_sae=self.cfg.d_sae)
        return self._with_dense_aux(codes, pre_acts, dead_mask)

    def _encode(
        self,
        dictionary: Owner,
        x: Tensor,
        dead_mask: Tensor | None,
        b_in: Tensor | None,
    ) -> ForwardOutput:
        aux_k = self._aux_k(dead_mask)
        codes = kernels.topk_encode(
            x,
            dictionary.W_enc,
            dictionary.b_enc,
            self.params.k,
            aux_mask=dead_mask if aux_k > 0 else None,
            aux_k=aux_k,
            signed=self.signed,
            b_in=b_in,
        )
        return ForwardOutput(
            values=codes.values,
            indices=codes.indices,
            aux_values=codes.aux_values,
            aux_indices=codes.aux_indices,
            d_sae=self.cfg.d_sae,
        )

    def _aux_k(self, dead_mask: Tensor | None) -> int:
        """AuxK latents per token this step: `min(aux_k, #dead)`; 0 without a dead mask or with
        `aux_k_coefficient` 0 (the loss would weight the selection by zero: skip its work)."""
        if dead_mask is None or self.cfg.aux_k_coefficient == 0:
            return 0
        return min(self.params.aux_k, int(dead_mask.sum()))

    def _with_dense_aux(
        self, codes: ForwardOutput, pre_acts: Tensor, dead_mask: Tensor | None
    ) -> ForwardOutput:
        """`codes` plus the AuxK selection from the whole `pre_acts [n, d_sae]` (for the
        subclasses that compute them densely)."""
        aux_k = self._aux_k(dead_mask)
        if dead_mask is not None and aux_k > 0:
            codes.aux_values, codes.aux_indices = kernels._select_aux(
                pre_acts, dead_mask, aux_k, signed=False
            )
        return codes

    def aux_loss(
        self,
        dictionary: Owner,
        codes: ForwardOutput,
        error: Tensor,
        total_variance: Tensor,
        dead_mask: Tensor | None,
    ) -> Tensor:
        """AuxK loss (unscaled by `aux_k_coefficient`): how well the dead latents' codes
        reconstruct the residual `-error`; zero when no latent is dead."""
        if codes.aux_values is None or codes.aux_indices is None or dead_mask is None:
            return dictionary.W_dec.new_zeros(())
        n_dead = float(dead_mask.sum())
        scale = min(n_dead / float(self.params.aux_k or 1), 1.0)
        residual_hat = dictionary.decode_sparse(codes.aux_values, codes.aux_indices, bias=False)
        # residual_hat - (-error), written as the sum: the same bits, no negated copy
        return scale * squared_sum(residual_hat + error) / total_variance

    def saelens_architecture(self) -> str | None:
        """ "topk" for SAEs and for plain transcoders with `d_in == d_out` (same math: SAELens'
        TopK SAE with `apply_b_dec_to_input=False` is `TopK(x W_enc + b_enc) W_dec + b_dec`);
        None otherwise (SAELens 6.54 has no TopK transcoder)."""
        cfg = self.cfg
        if not self.params.topk_relu:  # SAELens' TopK applies a ReLU
            return None
        if cfg.kind == "sae" or (cfg.kind == "transcoder" and cfg.d_in == cfg.d_out):
            return "topk"
        return None

    def extra_cfg(self) -> dict[str, Any]:
        """`k` and `rescale_acts_by_decoder_norm=False` for SAELens' TopK config."""
        return {"k": self.params.k, "rescale_acts_by_decoder_norm": False}
