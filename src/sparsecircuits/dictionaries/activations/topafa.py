"""top-AFA (Lee, Davies, Canby & Hockenmaier 2025) and the ε-LBO metric (docs/internals.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsecircuits.dictionaries import kernels
from sparsecircuits.dictionaries.activations.base import ForwardOutput, Owner
from sparsecircuits.dictionaries.activations.topk import TopKActivation, TopKParams

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.base import Dictionary


def afa_choose_k(
    contributions: Tensor, target_norm: Tensor, k_max: int
) -> tuple[Tensor, Tensor, Tensor]:
    """top-AFA selection on `contributions [n, m]` (the `s_i`) and `target_norm [n]`: `(k [n] int64
    in 1..k_max, indices [n, k_max] by contribution, keep [n, k_max] bool: first k[r] of row r)`."""
    sorted_s, indices = contributions.topk(k_max, dim=1, sorted=True)
    cumulative = sorted_s.cumsum(dim=1).clamp_min(0).sqrt()
    k = (cumulative - target_norm[:, None]).abs().argmin(dim=1) + 1
    keep = torch.arange(k_max, device=k.device)[None, :] < k[:, None]
    return k, indices, keep


@dataclass
class TopAFAParams(TopKParams):
    """TopK's settings (`k` is the cap k_max) and the norm-matching term's weight."""

    afa_coefficient: float = 1.0 / 32.0


class TopAFAActivation(TopKActivation):
    """Per-token k by AFA norm matching (at most `k`), unit decoder, AuxK."""

    name = "topafa"
    Params = TopAFAParams
    sae_only = True  # the norm target is the input
    fused_input_bias = False
    params: TopAFAParams

    def encode(self, dictionary: Owner, x_in: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """Sparse codes `values, indices [n, k_max]`, zeros past each token's chosen k."""
        pre_acts = torch.addmm(dictionary.b_enc, x_in, dictionary.W_enc)
        acts = pre_acts.relu()
        with torch.no_grad():
            contributions = (acts * dictionary.W_dec.norm(dim=1)).pow(2)
            _, indices, keep = afa_choose_k(contributions, x_in.norm(dim=1), self.params.k)
        values = acts.gather(1, indices) * keep
        codes = ForwardOutput(
            pre_acts=pre_acts, values=values, indices=indices, d_sae=self.cfg.d_sae
        )
        codes.extras["target_norm"] = x_in.norm(dim=1)
        return self._with_dense_aux(codes, pre_acts, dead_mask)

    def sparsity_loss(
        self, dictionary: Owner, codes: ForwardOutput, dead_mask: Tensor | None
    ) -> Tensor:
        """`afa_coefficient · mean_tokens (||f ⊙ ||W_dec|| || - ||x - b_in||)²`."""
        assert codes.values is not None and codes.indices is not None
        norms = kernels.take(dictionary.W_dec.norm(dim=1), codes.indices)
        code_norm = (codes.values * norms).norm(dim=1)
        target_norm = codes.extras["target_norm"]
        return self.params.afa_coefficient * (code_norm - target_norm).pow(2).mean()

    def saelens_architecture(self) -> str | None:
        """SAELens has no top-AFA."""
        return None

    def extra_cfg(self) -> dict[str, object]:
        """`k` is the cap k_max."""
        return {"k": self.params.k}


@torch.no_grad()
def epsilon_lbo(dictionary: Dictionary, x: Tensor, target: Tensor | None = None) -> Tensor:
    """Per-token ε-LBO `[n]` of `dictionary` on `x [n, d_in]` (lower is better).

    `z` is `target` when given (transcoders) else `x`; `h = d_sae`.
    """
    z = x if target is None else target
    feature_acts = dictionary.forward(x).feature_acts
    scaled = feature_acts * dictionary.W_dec.norm(dim=1)
    f_tilde_sq = scaled.pow(2).sum(dim=1) + dictionary.b_dec.pow(2).sum()
    h = dictionary.d_sae
    return (z.pow(2).sum(dim=1) - f_tilde_sq).abs() / (
        (h - 1) * f_tilde_sq.clamp_min(torch.finfo(z.dtype).tiny)
    )
