"""Reconstruction, sparsity and density metrics of a dictionary on held-out activations."""

from __future__ import annotations

from typing import Any

import torch

from sparsecircuits.dictionaries import SparseCoder

DENSE_THRESHOLD = 0.1  # a latent firing on more than 10% of tokens counts as dense


@torch.no_grad()
def reconstruction_metrics(
    dictionary: SparseCoder, x: torch.Tensor, target: torch.Tensor, chunk: int = 4096
) -> dict[str, Any]:
    """Return L0, L1, MSE, FVU (`Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`), explained variance (1 − FVU), cosine
    similarity and the dead / dense (> 10% of tokens) latent fractions on `x [n, d_in]` against
    `target [n, d_out]`.

    A cross-layer transcoder takes `x [n, L, d_in]`, `target [n, L, d_out]` (all layers encoded at
    once from the clean inputs) and adds `layers` (per layer: the keys above plus `layer`, `hook_in`,
    `hook_out`); its totals sum `l0`, `l1`, pool `fvu` (`fvu_mean_over_layers`: the loss's
    unweighted mean), average `mse`, `cossim`, and take dead / dense over all `L × d_sae` latents.
    """
    layered = x.ndim == 3
    if not layered:
        x, target = x[:, None], target[:, None]
    n, n_layers = x.shape[0], x.shape[1]
    sq_err = torch.zeros(n_layers, dtype=torch.float64)
    l0_sum = torch.zeros(n_layers, dtype=torch.float64)
    l1_sum = torch.zeros(n_layers, dtype=torch.float64)
    cos_sum = torch.zeros(n_layers, dtype=torch.float64)
    fires = torch.zeros(n_layers, dictionary.cfg.d_sae, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk):
        xb, yb = x[start : start + chunk], target[start : start + chunk]
        fo = dictionary(xb if layered else xb[:, 0])
        assert fo.out is not None
        out = fo.out.reshape(yb.shape)
        feature_acts = fo.feature_acts.reshape(yb.shape[0], n_layers, -1)
        active = feature_acts != 0
        fires += active.sum(0)
        for layer in range(n_layers):
            sq_err[layer] += float((out[:, layer] - yb[:, layer]).pow(2).sum())
            l0_sum[layer] += float(active[:, layer].sum())
            l1_sum[layer] += float(feature_acts[:, layer].abs().sum())
            cos_sum[layer] += float(
                torch.nn.functional.cosine_similarity(out[:, layer], yb[:, layer], dim=-1).sum()
            )
    hooks_in, hooks_out = dictionary.cfg.layer_hooks()
    layers: list[dict[str, Any]] = []
    total_vars = []
    for layer in range(n_layers):
        y = target[:, layer]
        total_var = float((y - y.mean(0)).pow(2).sum())
        total_vars.append(total_var)
        fvu = float(sq_err[layer]) / total_var if total_var > 0 else float("nan")
        record = {"layer": layer, "hook_in": hooks_in[layer], "hook_out": hooks_out[layer]}
        mse = float(sq_err[layer]) / (n * y.shape[1])
        l0, l1, cossim = (float(total[layer]) / n for total in (l0_sum, l1_sum, cos_sum))
        layers.append(record | _record(fires[layer], n, l0, l1, mse, fvu, cossim))
    if not layered:
        return {k: v for k, v in layers[0].items() if k not in ("layer", "hook_in", "hook_out")}
    total_var = sum(total_vars)
    fvu = float(sq_err.sum()) / total_var if total_var > 0 else float("nan")
    overall = _record(
        fires,
        n,
        l0=sum(r["l0"] for r in layers),
        l1=sum(r["l1"] for r in layers),
        mse=sum(r["mse"] for r in layers) / n_layers,
        fvu=fvu,
        cossim=sum(r["cossim"] for r in layers) / n_layers,
    )
    overall["fvu_mean_over_layers"] = sum(r["fvu"] for r in layers) / n_layers
    return overall | {"layers": layers}


def _record(
    fires: torch.Tensor, n: int, l0: float, l1: float, mse: float, fvu: float, cossim: float
) -> dict[str, Any]:
    """One metrics record from per-token statistics over `n` tokens; `fires` counts, per
    latent, the tokens it fired on."""
    density = fires.float() / n
    return {
        "l0": l0,
        "l1": l1,
        "mse": mse,
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "cossim": cossim,
        "dead_frac": float((fires == 0).float().mean()),
        "dense_frac": float((density > DENSE_THRESHOLD).float().mean()),
        "n_tokens": n,
    }
