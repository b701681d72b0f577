"""TopK (Gao et al. 2024, sparsify): keep the k largest pre-activations per token, then ReLU.

`f = ReLU(TopK_k((x - b_in) W_enc + b_enc))`. There is no sparsity penalty; the decoder rows
are kept at unit norm (`decoder_norm="unit"`), so activations carry the scale.

AuxK (dead-latent revival, Gao et al. §A.2 as in sparsify): given `dead_mask [d_sae]` (True =
no firing for `dead_tokens_threshold` tokens, tracked by the trainer), take per token the top
`k_aux = min(aux_k, #dead)` ReLU'd pre-activations among dead latents, decode them without
bias, and regress the detached residual `e = target - out`:
`aux = min(#dead / aux_k, 1) · Σ (ê - e)² / Σ (target - mean(target))²`.
The loss adds `aux_k_coefficient · aux` (1/32 by default). Unlike sparsify, `ê` does not add
`b_dec` (sparsify issue #132) and the gradient reaches the encoder, not only the decoder.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from sparsecircuits.dictionaries import kernels
from sparsecircuits.dictionaries.activations.base import Activation, ForwardOutput, Owner


class TopKActivation(Activation):
    """TopK then ReLU, sparse kernels by default (`cfg.sparse_kernels`), AuxK for dead latents."""

    name = "topk"
    signed = False

    def encode(self, dictionary: Owner, x_in: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """Sparse codes `values, indices [n, k]` (+ AuxK selection when `dead_mask` has dead latents)."""
        return self._encode(dictionary, x_in, dead_mask, None)

    def encode_input(self, dictionary: Owner, x: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """`encode(x - b_in)` with `b_in` handed to the kernel (families that override `encode`
        keep the generic path)."""
        if type(self).encode is not TopKActivation.encode:
            return super().encode_input(dictionary, x, dead_mask)
        return self._encode(dictionary, x, dead_mask, dictionary.b_in)

    def _encode(
        self,
        dictionary: Owner,
        x: Tensor,
        dead_mask: Tensor | None,
        b_in: Tensor | None,
    ) -> ForwardOutput:
        aux_k = 0
        aux_mask = None
        if dead_mask is not None:
            n_dead = int(dead_mask.sum())
            aux_k = min(self.cfg.aux_k or 0, n_dead)
            aux_mask = dead_mask if aux_k > 0 else None
        encode = kernels.topk_encode if self.cfg.sparse_kernels else kernels.topk_encode_dense
        codes = encode(
            x,
            dictionary.W_enc,
            dictionary.b_enc,
            self.cfg.k,
            aux_mask=aux_mask,
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

    def aux_loss(
        self,
        dictionary: Owner,
        codes: ForwardOutput,
        residual: Tensor,
        total_variance: Tensor,
        dead_mask: Tensor | None,
    ) -> Tensor:
        """AuxK loss (unscaled by `aux_k_coefficient`); zero when no latent is dead."""
        if codes.aux_values is None or codes.aux_indices is None or dead_mask is None:
            return dictionary.W_dec.new_zeros(())
        n_dead = float(dead_mask.sum())
        scale = min(n_dead / float(self.cfg.aux_k or 1), 1.0)
        residual_hat = dictionary.decode_sparse(codes.aux_values, codes.aux_indices, bias=False)
        return scale * (residual_hat - residual).pow(2).sum() / total_variance

    def saelens_architecture(self) -> str | None:
        """ "topk" for SAEs and for plain transcoders with `d_in == d_out` (same math: SAELens'
        TopK SAE with `apply_b_dec_to_input=False` is `TopK(x W_enc + b_enc) W_dec + b_dec`);
        None otherwise (SAELens 6.54 has no TopK transcoder)."""
        cfg = self.cfg
        if cfg.kind == "sae" or (cfg.kind == "transcoder" and cfg.d_in == cfg.d_out):
            return "topk"
        return None

    def extra_cfg(self) -> dict[str, Any]:
        """`k` and `rescale_acts_by_decoder_norm=False` for SAELens' TopK config."""
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}
