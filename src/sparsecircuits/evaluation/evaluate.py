"""Evaluate dictionaries on a window of held-out tokens: one metrics record per dictionary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from sparsecircuits.dictionaries import SparseCoder
from sparsecircuits.evaluation.metrics import reconstruction_metrics
from sparsecircuits.evaluation.splice import (
    Baseline,
    baseline_losses,
    check_splice_hooks,
    spliced_hooks,
    spliced_losses,
)
from sparsecircuits.models import ModelAdapter

# The dictionary config fields each record starts with (after its name; `k` follows).
IDENTITY_KEYS = ("kind", "architecture", "hook_in", "hook_out", "d_in", "d_sae", "d_out")
# SAELens's names for the same quantities, written alongside ours.
SAELENS_ALIASES = {
    "ce_loss_score": "ce_loss_recovered",
    "ce_loss_without_sae": "ce_loss_clean",
    "ce_loss_with_sae": "ce_loss_spliced",
    "ce_loss_with_ablation": "ce_loss_zero_ablated",
    "kl_div_with_sae": "kl_div",
}


def harvest_pairs(
    adapter: ModelAdapter, batches: list[torch.Tensor], hooks: list[str], skip_bos: bool = True
) -> dict[str, torch.Tensor]:
    """Return `{hook: activations [tokens, d]}` over all batches (BOS position dropped)."""
    chunks: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    for ids in batches:
        _, cache = adapter.run_with_cache(ids, hooks)
        for h in hooks:
            act = cache[h][:, 1:] if skip_bos else cache[h]
            chunks[h].append(act.reshape(-1, act.shape[-1]).float())
    return {h: torch.cat(v) for h, v in chunks.items()}


@torch.no_grad()
def evaluate_dictionaries(
    adapter: ModelAdapter, dictionaries: Mapping[str, SparseCoder], batches: list[torch.Tensor]
) -> list[dict[str, Any]]:
    """Return one record per dictionary: identity (`name, kind, architecture, hook_in, hook_out,
    d_in, d_sae, d_out, k`), `reconstruction_metrics` and `spliced_losses` on `batches [b, p]`, plus
    SAELens aliases. A cross-layer transcoder adds `n_layers` and per-layer `layers`; dictionaries
    writing the same hooks share one clean and ablated baseline."""
    for d in dictionaries.values():
        check_splice_hooks(adapter, *d.cfg.layer_hooks())
    hooks = sorted({h for d in dictionaries.values() for h in d.hook_names()})
    acts = harvest_pairs(adapter, batches, hooks)
    records = []
    # Clean and ablated runs, shared by the dictionaries that write the same set of hooks.
    baselines: dict[tuple[str, ...], Baseline] = {}
    for name, dictionary in dictionaries.items():
        cfg = dictionary.cfg
        was_training = dictionary.training
        dictionary.eval()
        record: dict[str, Any] = {
            "name": name,
            **{key: getattr(cfg, key) for key in IDENTITY_KEYS},
            "k": getattr(cfg, "k", None),
        }
        hooks_out = spliced_hooks(dictionary)
        x, target = dictionary.inputs_from(acts)
        if x.ndim == 3:  # a layer axis
            record["n_layers"] = x.shape[1]
        record.update(reconstruction_metrics(dictionary, x, x if target is None else target))
        del x, target
        if hooks_out not in baselines:
            means = {hook: acts[hook].mean(0) for hook in hooks_out}
            baselines[hooks_out] = baseline_losses(adapter, batches, hooks_out, means)
        record.update(spliced_losses(adapter, dictionary, batches, baseline=baselines[hooks_out]))
        for alias, ours in SAELENS_ALIASES.items():
            record[alias] = record[ours]
        dictionary.train(was_training)
        records.append(record)
    return records
