"""Baseline head scores on the same prompt pairs: attribution patching and transcoder attributions.

* Attribution patching (Nanda 2023): `Δ_h ≈ Σ_{pos, d_head} (z_neg − z_pos) · ∂M/∂z |_pos`,
  the first-order change of the task metric M when head h's `z` is patched from the negative;
  two forward passes and one backward for all heads.
* Transcoder attributions: the exact gradient × activation attribution of the linearised task
  metric through the replacement model (MLPs replaced by transcoders, attention patterns and
  norms frozen, features following their pre-activations: `attribute(mode="linear")`), summed
  over every attention edge of each head.

Both give a signed mean over prompts per head, `[n_layers * n_heads]`; heads are ranked by its
absolute value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from sparsecircuits.circuits.attribution import attribute, metric_gradient_target
from sparsecircuits.circuits.identify.head_outputs import z_hooks
from sparsecircuits.circuits.identify.readout import final_logits
from sparsecircuits.circuits.identify.task_pairs import TaskPairs, pair_batch
from sparsecircuits.circuits.replacement import ReplacementModel
from sparsecircuits.dictionaries import Dictionary, TranscoderSet
from sparsecircuits.models import ModelAdapter


def _leaf_hook(name: str, leaves: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
    """Return a hook that swaps the activation for a detached leaf (stored in `leaves[name]`)
    so the metric's gradient with respect to it can be taken."""

    def fn(z: Tensor) -> Tensor:
        leaves[name] = z.detach().requires_grad_(True)
        return leaves[name]

    return fn


def attribution_patching(adapter: ModelAdapter, pairs: TaskPairs, batch_size: int = 64) -> Tensor:
    """Return the attribution-patching estimate of each head's metric change, `[n_heads_total]`
    (mean over prompts, signed: negative means patching lowers the metric)."""
    n_heads = adapter.n_heads
    total = torch.zeros(adapter.n_layers * n_heads)
    names = z_hooks(adapter)
    for start in range(0, len(pairs), batch_size):
        stop = min(start + batch_size, len(pairs))
        rows, pos_ids, neg_ids, last = pair_batch(pairs, start, stop)
        with torch.no_grad():
            _, neg_cache = adapter.run_with_cache(neg_ids.to(adapter.device), names)
        leaves: dict[str, Tensor] = {}
        hooks = {name: _leaf_hook(name, leaves) for name in names}
        with torch.enable_grad(), adapter.hooks(hooks):
            metric = pairs.metric(final_logits(adapter, pos_ids, last), rows).sum()
            grads = torch.autograd.grad(metric, [leaves[name] for name in names])
        for layer, (name, grad) in enumerate(zip(names, grads, strict=True)):
            delta = (neg_cache[name] - leaves[name].detach()) * grad  # [b, p, h, d_head]
            total[layer * n_heads : (layer + 1) * n_heads] += delta.sum((0, 1, 3)).float().cpu()
    return total / len(pairs)


def transcoder_head_attribution(
    adapter: ModelAdapter,
    transcoders: TranscoderSet | Mapping[int, Dictionary],
    pairs: TaskPairs,
    batch_size: int = 32,
) -> Tensor:
    """Return each head's attribution of the linearised task metric through the replacement
    model, summed over its attention edges and averaged over positive prompts, `[n_heads_total]`."""
    model = ReplacementModel(adapter, transcoders)
    n_heads = adapter.n_heads
    total = torch.zeros(adapter.n_layers * n_heads)
    for start in range(0, len(pairs), batch_size):
        stop = min(start + batch_size, len(pairs))
        offset = start

        def metric(logits: Tensor, batch: Tensor, offset: int = offset) -> Tensor:
            return pairs.metric(logits.float(), batch.cpu() + offset)

        ids = pairs.positives.input_ids[start:stop]
        state = model.run(ids.to(adapter.device))
        last = pairs.positives.last_pos[start:stop]
        target = metric_gradient_target(model, state, metric, "task metric", last.to(model.device))
        heads = attribute(model, state, target, mode="linear").heads()
        for layer, values in heads.items():
            total[layer * n_heads : (layer + 1) * n_heads] += values.sum(0).float().cpu()
    return total / len(pairs)
