"""Discrete codes of head outputs: one small ReLU SAE shared by all heads, code = argmax latent.

O'Neill & Bui (2024) train the SAE on a handful of prompts' per-head outputs (`[n, heads, d]`
flattened to `[n * heads, d]`): `m = 200` latents, loss `MSE + λ · mean ||z||₁`, Adam at 1e-3,
500 full-batch epochs, unit-norm decoder atoms (their code normalises along the latent axis;
we normalise each atom, as the reference notes). Their MSE is a per-element mean; our
`Dictionary` loss sums the squared error over `d_model`, so the L1 coefficient is `λ · d_model`
to keep their balance. The SAE is the project's `Dictionary` (ReLU family, kind "sae") trained
with its own step contract, full batch (the `Trainer` streams model activations; here the data
is a few hundred vectors in memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecircuits.dictionaries import Dictionary
from sparsecircuits.dictionaries.config import DictionaryConfig


@dataclass(frozen=True)
class CodeConfig:
    """Settings of the shared SAE (defaults: O'Neill & Bui's main results)."""

    n_latents: int = 200
    l1: float = 0.02  # λ per O'Neill's per-element MSE (0.05 for docstring in the paper)
    epochs: int = 500
    lr: float = 1e-3
    n_train_prompts: int = 10


def train_shared_sae(outputs: Tensor, cfg: CodeConfig, seed: int = 0) -> Dictionary:
    """Train the shared ReLU SAE on `outputs [n_prompts, n_heads, d_model]` (every head's vector
    of every prompt is one training row); return it in eval mode."""
    x = outputs.reshape(-1, outputs.shape[-1]).float()
    d_model = x.shape[-1]
    sae = Dictionary(
        DictionaryConfig(
            architecture="relu",
            kind="sae",
            d_in=d_model,
            d_sae=cfg.n_latents,
            hook_in="head_outputs",
            seed=seed,
            decoder_norm="unit",
            recon_loss="mse",
            l1_coefficient=cfg.l1 * d_model,
        )
    )
    sae.init_biases_from_data(x)
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    sae.train()
    for _ in range(cfg.epochs):
        loss, _parts = sae.loss(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sae.before_optimizer_step()
        optimizer.step()
        sae.after_optimizer_step()
    return sae.eval()


@torch.no_grad()
def discrete_codes(sae: Dictionary, outputs: Tensor) -> Tensor:
    """Return each head's code, the index of its largest latent: `[n_prompts, n_heads]` int64."""
    return sae.encode(outputs.float()).argmax(-1)


def sae_training_rows(n_pool: int, n_train: int, seed: int) -> Tensor:
    """Return `n_train` distinct prompt indices drawn (seeded) from a pool of `n_pool`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_pool, generator=generator)[: min(n_train, n_pool)]
