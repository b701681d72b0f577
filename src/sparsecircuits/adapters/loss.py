"""The bridging loss of transcoder adapters (Hu et al. 2026, bridging mode).

    L = λ_adapt · KL(p_ref ‖ p_adapt)
      + l1 · Σ_ℓ mean_t Σ_i z_{ℓ,t,i} ||W_dec,ℓ[i]||
      + λ_nmse · mean_{ℓ=0..L} Σ_t ||h^adapt_ℓ − h^ref_ℓ||² / Σ_t ||h^ref_ℓ||²
      + λ_bridge · [KL(p_ref ‖ p_{a→r,k}) + KL(p_ref ‖ p_{r→a,k})]

`h_ℓ` is the residual entering block ℓ (`h_L` after the last block). `a→r,k` runs the adapted
model up to the cut `k`, then the reference from `h_k` on; `r→a,k` the other way round. A cut
with no adapter layer in its path (a→r at k = 0, r→a at k = L) is left out. KL is per next-token
distribution, averaged over every position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecircuits.adapters.model import attached, residual_from, residual_hook
from sparsecircuits.dictionaries import PerLayerTranscoders
from sparsecircuits.models import ModelAdapter


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four terms (the paper's 7B settings, except `l1`, which is per model)."""

    kl: float = 1.0
    nmse: float = 1.0
    bridge: float = 2.0
    l1: float = 1e-3


def kl_divergence(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """Mean over positions of KL(softmax(ref_logits) ‖ softmax(logits)); both `[b, p, vocab]`."""
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    logp = F.log_softmax(logits.float(), dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()


def nmse(h: Tensor, ref: Tensor) -> Tensor:
    """`Σ ||h − ref||² / Σ ||ref||²` over every position (the paper's mean-based NMSE)."""
    return (h.float() - ref.float()).pow(2).sum() / ref.float().pow(2).sum().clamp_min(1e-12)


def decoder_weighted_l1(adapters: PerLayerTranscoders, acts: dict[int, Tensor]) -> Tensor:
    """`Σ_ℓ mean_t Σ_i z_{ℓ,t,i} ||W_dec,ℓ[i]||` for `acts[ℓ] [b, p, d_sae]`."""
    total = torch.zeros(())
    for layer, a in acts.items():
        norms = adapters[layer].W_dec.norm(dim=1)
        total = total + (a.flatten(0, -2) @ norms).mean()
    return total


def residuals(model: ModelAdapter, input_ids: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Run `model` (with whatever hooks are active); return logits `[b, p, vocab]` and the
    residuals `h_0..h_L`, each `[b, p, d]`."""
    names = [residual_hook(layer) for layer in range(model.n_layers + 1)]
    logits, cache = model.run_with_cache(input_ids, names, stop_after_last=False)
    assert logits is not None
    return logits, [cache[name] for name in names]


@dataclass
class ReferenceRun:
    """The reference model's logits and residuals `h_0..h_L` on one batch (no graph)."""

    logits: Tensor
    resid: list[Tensor]


@torch.no_grad()
def reference_run(reference: ModelAdapter, input_ids: Tensor) -> ReferenceRun:
    """Return the reference model's `ReferenceRun` on `input_ids [b, p]`."""
    logits, resid = residuals(reference, input_ids)
    return ReferenceRun(logits, resid)


def bridging_loss(
    backbone: ModelAdapter,
    reference: ModelAdapter,
    adapters: PerLayerTranscoders,
    input_ids: Tensor,
    cut: int,
    weights: LossWeights,
    ref: ReferenceRun | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Return the total loss (differentiable in the adapters) and its parts as floats.

    `cut` is the bridging layer `k` in `0..n_layers`. Parts: `kl`, `nmse`, `nmse_layers`
    (per residual `h_0..h_L`, as a list), `l1`, `l0` (summed over layers, per token), `a2r`,
    `r2a` (None when that direction has no adapter layer), `loss`.
    """
    n_layers = backbone.n_layers
    if ref is None:
        ref = reference_run(reference, input_ids)
    with attached(backbone, adapters) as run:
        logits, resid = residuals(backbone, input_ids)
        acts = dict(run.acts)
    kl = kl_divergence(ref.logits, logits)
    per_layer = [nmse(h, r) for h, r in zip(resid, ref.resid, strict=True)]
    nmse_mean = torch.stack(per_layer).mean()
    l1 = decoder_weighted_l1(adapters, acts)
    total = weights.kl * kl + weights.nmse * nmse_mean + weights.l1 * l1
    parts: dict[str, Any] = {"a2r": None, "r2a": None}
    bridges = []
    if cut > 0:  # adapted layers 0..k-1, then the reference
        with residual_from(reference, cut, resid[cut]):
            bridges.append(("a2r", kl_divergence(ref.logits, reference(input_ids))))
    if cut < n_layers:  # reference layers 0..k-1, then the adapted model
        with attached(backbone, adapters), residual_from(backbone, cut, ref.resid[cut]):
            bridges.append(("r2a", kl_divergence(ref.logits, backbone(input_ids))))
    for name, value in bridges:
        parts[name] = value.item()
    if bridges:
        total = total + weights.bridge * torch.stack([v for _, v in bridges]).sum()
    l0 = sum((a > 0).float().sum(-1).mean().item() for a in acts.values())
    parts.update(
        kl=kl.item(),
        nmse=nmse_mean.item(),
        nmse_layers=[v.item() for v in per_layer],
        l1=l1.item(),
        l0=l0,
        loss=total.item(),
    )
    return total, parts
