"""AbsTopK (Zhu, Khalili & Zhu 2025): keep the k pre-activations of largest |value|, sign kept
(docs/internals.md)."""

from __future__ import annotations

from sparsecircuits.dictionaries.activations.topk import TopKActivation


class AbsTopKActivation(TopKActivation):
    """TopK by magnitude with signs kept (sparse kernels as TopK; signed AuxK)."""

    name = "abstopk"
    signed = True

    def saelens_architecture(self) -> str | None:
        """ "abstopk" (SAELens 6.54) for SAEs and for transcoders with `d_in == d_out`."""
        return "abstopk" if super().saelens_architecture() == "topk" else None
