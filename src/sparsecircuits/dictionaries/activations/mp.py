"""Matching pursuit (Costa, Fel, Lubana, Tolooshams & Ba 2025; SAELens "matching_pursuit"): a
tied dictionary encoding greedily with its decoder (docs/internals.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from sparsecircuits.dictionaries.activations.base import (
    Activation,
    ActivationParams,
    ForwardOutput,
    Owner,
)
from sparsecircuits.dictionaries.activations.topk import check_k
from sparsecircuits.dictionaries.kernels import take

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.base import Dictionary
    from sparsecircuits.dictionaries.config import DictionaryConfig


def matching_pursuit(
    residual: Tensor,
    atoms: Tensor,
    n_steps: int,
    residual_threshold: float = 0.0,
    stop_on_duplicate_support: bool = False,
) -> tuple[Tensor, Tensor, list[Tensor], Tensor]:
    """Run matching pursuit on `residual [n, d]` over unit-row `atoms [m, d]`: `(codes [n, m], final
    residual [n, d], chosen atom per step (list of [n] int64), residual norm per step [steps, n])`.
    A row stops once its residual norm is below `residual_threshold` or, with
    `stop_on_duplicate_support`, once a step leaves its support unchanged."""
    n, m = residual.shape[0], atoms.shape[0]
    codes = residual.new_zeros(n, m)
    done = torch.zeros(n, dtype=torch.bool, device=residual.device)
    support = torch.zeros(n, m, dtype=torch.bool, device=residual.device)
    chosen: list[Tensor] = []
    norms: list[Tensor] = []
    for _ in range(n_steps):
        with torch.no_grad():
            index = (residual @ atoms.T).argmax(dim=1)
        atom = take(atoms, index)
        alpha = (residual * atom).sum(dim=1, keepdim=True).relu() * (~done)[:, None]
        codes = codes.scatter_add(1, index[:, None], alpha)
        residual = residual - alpha * atom
        chosen.append(index)
        with torch.no_grad():
            norms.append(residual.norm(dim=1))
            if residual_threshold > 0:
                done = done | (norms[-1] < residual_threshold)
            if stop_on_duplicate_support:
                new_support = codes != 0
                done = done | (new_support == support).all(dim=1)
                support = new_support
            if bool(done.all()):
                break
    return codes, residual, chosen, torch.stack(norms) if norms else residual.new_zeros(0, n)


@dataclass
class MatchingPursuitParams(ActivationParams):
    """Training steps and the inference stopping rule."""

    tag_format = "k{k}"
    k: int = 32  # steps per token in training
    mp_residual_threshold: float = 1e-2  # inference stops below this residual norm
    mp_max_iterations: int = 0  # inference step cap; 0: d_in (SAELens' default)

    def resolve(self, cfg: DictionaryConfig) -> None:
        """Check `k`; fill `mp_max_iterations` from `d_in`."""
        check_k(self.k, cfg.d_sae)
        self.mp_max_iterations = self.mp_max_iterations or cfg.d_in


class MatchingPursuitActivation(Activation):
    """Greedy residual-guided encoder over the tied, unit-norm decoder."""

    name = "mp"
    Params = MatchingPursuitParams
    default_decoder_norm = "unit"
    default_recon_loss = "fvu"
    sae_only = True  # one tied dictionary reads and writes the same space
    uses_input_bias = False
    tied = True
    params: MatchingPursuitParams

    def encode(self, dictionary: Owner, x_in: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """Dense codes from `k` MP steps (training) or the adaptive inference rule (eval)."""
        params = self.params
        residual = x_in - cast("Dictionary", dictionary).b_dec  # SAE-only family: a Dictionary
        if self.training:
            codes, *_ = matching_pursuit(residual, dictionary.W_dec, params.k)
        else:
            codes, *_ = matching_pursuit(
                residual,
                dictionary.W_dec,
                params.mp_max_iterations,
                residual_threshold=params.mp_residual_threshold,
                stop_on_duplicate_support=True,
            )
        return ForwardOutput(dense_acts=codes, d_sae=self.cfg.d_sae)

    def saelens_architecture(self) -> str | None:
        """ "matching_pursuit" (SAE only)."""
        return "matching_pursuit"

    def extra_cfg(self) -> dict[str, Any]:
        """SAELens MP reads the stopping rule; it centres the input by `b_dec`."""
        params = self.params
        return {
            "apply_b_dec_to_input": True,
            "residual_threshold": params.mp_residual_threshold,
            "max_iterations": params.mp_max_iterations,
            "stop_on_duplicate_support": True,
        }
