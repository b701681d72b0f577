"""AbsTopK (Zhu, Khalili & Zhu 2025): keep the k pre-activations of largest |value|, sign kept.

`f = H_k((x - b_in) W_enc + b_enc)` where `H_k` zeroes all but the k largest-magnitude entries
and applies no ReLU, so one latent can encode both poles of an axis. It is the proximal map of
`ι{||z||_0 <= k}` (no sign constraint). The decoder is unit-norm; AuxK is signed: among dead
latents the top `k_aux` by |pre-activation| keep their signed values.
"""

from __future__ import annotations

from sparsecircuits.dictionaries.activations.topk import TopKActivation


class AbsTopKActivation(TopKActivation):
    """TopK by magnitude with signs kept (sparse kernels as TopK; signed AuxK)."""

    name = "abstopk"
    signed = True

    def saelens_architecture(self) -> str | None:
        """ "abstopk" (SAELens 6.54) for SAEs and for transcoders with `d_in == d_out`."""
        return "abstopk" if super().saelens_architecture() == "topk" else None
