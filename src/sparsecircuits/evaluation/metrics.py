"""Reconstruction, sparsity and density metrics of a dictionary on held-out activations."""

from __future__ import annotations

from typing import Any

import torch

from sparsecircuits.dictionaries import CrossLayerTranscoder, SparseCoder

DENSE_THRESHOLD = 0.1  # a latent firing on more than 10% of tokens counts as dense


@torch.no_grad()
def reconstruction_metrics(
    dictionary: SparseCoder, x: torch.Tensor, target: torch.Tensor, chunk: int = 4096
) -> dict[str, Any]:
    """Return L0, L1, MSE, FVU, explained variance, cosine similarity and density stats.

    `x [n, d_in]` are inputs and `target [n, d_out]` the activations the dictionary should
    reproduce (equal to `x` for an SAE). FVU is `Σ‖y − ŷ‖² / Σ‖y − ȳ‖²` over the window;
    explained variance is `1 − FVU`. A latent is dead if it never fires in the window and
    dense if it fires on more than 10% of its tokens. A `CrossLayerTranscoder` takes
    `x [n, L, d_in]`, `target [n, L, d_out]`: see `clt_reconstruction_metrics`.
    """
    if isinstance(dictionary, CrossLayerTranscoder):
        return clt_reconstruction_metrics(dictionary, x, target, chunk)
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


@torch.no_grad()
def clt_reconstruction_metrics(
    clt: CrossLayerTranscoder, x: torch.Tensor, target: torch.Tensor, chunk: int = 4096
) -> dict[str, Any]:
    """Return a cross-layer transcoder's metrics over all its layers, and per layer.

    `x [n, L, d_in]` are the layers' inputs, `target [n, L, d_out]` their outputs (each layer's
    output reconstructed from the *clean* inputs of layers <= t, all encoded at once). Per layer
    the keys are those of `reconstruction_metrics` plus `layer`, `hook_in`, `hook_out`, listed
    under `layers`. Overall: `l0`, `l1` summed over layers (latents active per token in the whole
    CLT); `fvu` pooled, `Σ_t Σ‖y_t − ŷ_t‖² / Σ_t Σ‖y_t − ȳ_t‖²` (`fvu_mean_over_layers` is the
    unweighted mean the training loss uses); `mse` and `cossim` averaged over layers;
    `dead_frac` / `dense_frac` over all `L × d_sae` latents; `n_tokens`. With one layer every
    number equals the corresponding per-layer transcoder's.
    """
    n, n_layers = x.shape[0], clt.n_layers
    sq_err = torch.zeros(n_layers, dtype=torch.float64)
    l0_sum = torch.zeros(n_layers, dtype=torch.float64)
    l1_sum = torch.zeros(n_layers, dtype=torch.float64)
    cos_sum = torch.zeros(n_layers, dtype=torch.float64)
    fires = torch.zeros(n_layers, clt.d_sae, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk):
        xb, yb = x[start : start + chunk], target[start : start + chunk]
        fo = clt(xb)
        assert fo.out is not None
        out, feature_acts = fo.out, fo.feature_acts
        active = feature_acts != 0
        fires += active.sum(0)
        for layer in range(n_layers):
            # Per layer, the same float reductions `reconstruction_metrics` makes.
            sq_err[layer] += float((out[:, layer] - yb[:, layer]).pow(2).sum())
            l0_sum[layer] += float(active[:, layer].sum())
            l1_sum[layer] += float(feature_acts[:, layer].abs().sum())
            cos_sum[layer] += float(
                torch.nn.functional.cosine_similarity(out[:, layer], yb[:, layer], dim=-1).sum()
            )
    hooks_in, hooks_out = clt.cfg.layer_hooks()
    layers: list[dict[str, Any]] = []
    total_vars = []
    for layer in range(n_layers):
        y = target[:, layer]
        total_var = float((y - y.mean(0)).pow(2).sum())
        total_vars.append(total_var)
        fvu = float(sq_err[layer]) / total_var if total_var > 0 else float("nan")
        density = fires[layer].float() / n
        layers.append(
            {
                "layer": layer,
                "hook_in": hooks_in[layer],
                "hook_out": hooks_out[layer],
                "l0": float(l0_sum[layer]) / n,
                "l1": float(l1_sum[layer]) / n,
                "mse": float(sq_err[layer]) / (n * clt.d_out),
                "fvu": fvu,
                "explained_variance": 1.0 - fvu,
                "cossim": float(cos_sum[layer]) / n,
                "dead_frac": float((fires[layer] == 0).float().mean()),
                "dense_frac": float((density > DENSE_THRESHOLD).float().mean()),
                "n_tokens": n,
            }
        )
    total_var = sum(total_vars)
    fvu = float(sq_err.sum()) / total_var if total_var > 0 else float("nan")
    density = fires.float() / n
    return {
        "l0": sum(layer["l0"] for layer in layers),
        "l1": sum(layer["l1"] for layer in layers),
        "mse": sum(layer["mse"] for layer in layers) / n_layers,
        "fvu": fvu,
        "fvu_mean_over_layers": sum(layer["fvu"] for layer in layers) / n_layers,
        "explained_variance": 1.0 - fvu,
        "cossim": sum(layer["cossim"] for layer in layers) / n_layers,
        "dead_frac": float((fires == 0).float().mean()),
        "dense_frac": float((density > DENSE_THRESHOLD).float().mean()),
        "n_tokens": n,
        "layers": layers,
    }
