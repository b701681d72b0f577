"""Reconstruction, sparsity and density metrics of a dictionary on held-out activations."""

from __future__ import annotations

import torch

from sparsecircuits.dictionaries import Dictionary

DENSE_THRESHOLD = 0.1  # a latent firing on more than 10% of tokens counts as dense


@torch.no_grad()
def reconstruction_metrics(
    dictionary: Dictionary, x: torch.Tensor, target: torch.Tensor, chunk: int = 4096
) -> dict[str, float]:
    """Return L0, L1, MSE, FVU, explained variance, cosine similarity and density stats.

    `x [n, d_in]` are inputs and `target [n, d_out]` the activations the dictionary should
    reproduce (equal to `x` for an SAE). FVU is `Σ‖y − ŷ‖² / Σ‖y − ȳ‖²` over the window;
    explained variance is `1 − FVU`. A latent is dead if it never fires in the window and
    dense if it fires on more than 10% of its tokens.
    """
    n = x.shape[0]
    sq_err = 0.0
    l0_sum = 0.0
    l1_sum = 0.0
    cos_sum = 0.0
    fires = torch.zeros(dictionary.cfg.d_sae, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk):
        xb, yb = x[start : start + chunk], target[start : start + chunk]
        out, feature_acts = dictionary(xb)
        active = feature_acts != 0
        fires += active.sum(0)
        l0_sum += float(active.sum())
        l1_sum += float(feature_acts.abs().sum())
        sq_err += float((out - yb).pow(2).sum())
        cos_sum += float(torch.nn.functional.cosine_similarity(out, yb, dim=-1).sum())
    total_var = float((target - target.mean(0)).pow(2).sum())
    fvu = sq_err / total_var if total_var > 0 else float("nan")
    density = fires.float() / n
    return {
        "l0": l0_sum / n,
        "l1": l1_sum / n,
        "mse": sq_err / (n * target.shape[1]),
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "cossim": cos_sum / n,
        "dead_frac": float((fires == 0).float().mean()),
        "dense_frac": float((density > DENSE_THRESHOLD).float().mean()),
        "n_tokens": n,
    }
