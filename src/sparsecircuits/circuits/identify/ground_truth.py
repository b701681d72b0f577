"""Ground truth by intervention: per-head activation patching (positive <- negative).

For each head, its `z` (every position) on the positive prompts is replaced by its `z` on the
paired negative prompts, and the effect on the final-position output is measured:

* `kl`: mean over prompts of KL(clean positive distribution || patched distribution), the
  default criterion (ACDC's default metric; it sees any change of the prediction, which
  matters for IOI, where the three-name negative leaves logit(IO) - logit(S) high);
* `metric`: mean task metric drop, clean minus patched (sign kept).

Effects are normalised by the same quantity for the whole negative prompt (every head and
everything else corrupted), so 0.1 means "a tenth of the full corruption's effect". The
ground-truth set is every head whose normalised KL effect reaches the threshold; ground-truth
edges are the layer-ordered pairs of ground-truth heads.

Also holds the canonical GPT-2 small / attn-only-4l head sets (ACDC's dictionaries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.circuits.identify.head_outputs import z_hooks
from sparsecircuits.circuits.identify.readout import final_logits
from sparsecircuits.circuits.identify.task_pairs import TaskPairs, pair_batch
from sparsecircuits.models import ModelAdapter

# ACDC's canonical circuits (seed-methods §9.1-9.3): GPT-2 small IOI (26 heads) and
# greater-than (9 heads), attn-only-4l docstring (6 heads); "layer.head".
CANONICAL_HEADS: dict[str, dict[str, Any]] = {
    "ioi": {
        "model": "gpt2",
        "shape": [12, 12],
        "source": "ACDC IOI_CIRCUIT",
        "heads": [
            "9.9", "10.0", "9.6", "10.10", "10.6", "10.2", "10.1", "11.2", "9.7", "9.0",
            "11.9", "10.7", "11.10", "7.3", "7.9", "8.6", "8.10", "5.5", "5.8", "5.9", "6.9",
            "0.1", "0.10", "3.0", "2.2", "4.11",
        ],
        "note": "O'Neill & Bui use 11.3 where ACDC has 9.0 among the backup name movers",
    },
    "greater-than": {
        "model": "gpt2",
        "shape": [12, 12],
        "source": "ACDC greater-than CIRCUIT (attention heads only)",
        "heads": ["0.1", "0.3", "0.5", "5.5", "6.1", "6.9", "7.10", "8.11", "9.1"],
    },
    "docstring": {
        "model": "attn-only-4l",
        "shape": [4, 8],
        "source": "ACDC get_docstring_subgraph_true_edges",
        "heads": ["0.5", "1.2", "1.4", "2.0", "3.0", "3.6"],
        "note": "O'Neill & Bui list 1.0 where ACDC has 1.2",
    },
}  # fmt: skip


def canonical_applies(task: str, model_name: str, n_layers: int, n_heads: int) -> bool:
    """Return True when `model_name` names the canonical set's model (e.g. "gpt2",
    "hf://openai-community/gpt2") and its (layers, heads) shape matches."""
    entry = CANONICAL_HEADS[task]
    name = model_name.rstrip("/").split("/")[-1].split("@")[0]
    return name == entry["model"] and [n_layers, n_heads] == entry["shape"]


def canonical_mask(task: str, n_layers: int, n_heads: int) -> Tensor:
    """Return the canonical head set of `task` as a bool mask `[n_layers * n_heads]`
    (layer-major); only meaningful for the model the set was found on."""
    mask = torch.zeros(n_layers * n_heads, dtype=torch.bool)
    for label in CANONICAL_HEADS[task]["heads"]:
        layer, head = (int(p) for p in str(label).split("."))
        mask[layer * n_heads + head] = True
    return mask


@dataclass
class PatchingResult:
    """Per-head patching effects `[n_heads_total]` and the full corruption's effect."""

    kl: Tensor  # mean KL(clean || patched) at the final position
    metric_drop: Tensor  # mean task metric, clean minus patched
    full_kl: float  # the same for the whole negative prompt
    full_metric_drop: float
    clean_metric: float
    seconds: float = 0.0

    def normalised_kl(self) -> Tensor:
        """Per-head KL effect divided by the full corruption's KL effect."""
        return self.kl / max(self.full_kl, 1e-12)


def _final_log_probs(adapter: ModelAdapter, ids: Tensor, last: Tensor) -> Tensor:
    return torch.log_softmax(final_logits(adapter, ids, last), -1).cpu()


def _kl(clean: Tensor, other: Tensor) -> Tensor:
    return (clean.exp() * (clean - other)).sum(-1)


@torch.no_grad()
def patch_heads(adapter: ModelAdapter, pairs: TaskPairs, batch_size: int = 64) -> PatchingResult:
    """Patch each head's `z` from the negatives into the positives; return the effects."""
    start_time = time.perf_counter()
    n, n_heads = len(pairs), adapter.n_heads
    total = adapter.n_layers * n_heads
    kl = torch.zeros(total)
    drop = torch.zeros(total)
    full_kl, full_drop, clean_sum = 0.0, 0.0, 0.0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        rows, pos_ids, neg_ids, last = pair_batch(pairs, start, stop)
        clean = _final_log_probs(adapter, pos_ids, last)
        clean_metric = pairs.metric(clean, rows)
        clean_sum += float(clean_metric.sum())
        _, neg_cache = adapter.run_with_cache(neg_ids.to(adapter.device), z_hooks(adapter))
        full = _final_log_probs(adapter, neg_ids, last)
        full_kl += float(_kl(clean, full).sum())
        full_drop += float((clean_metric - pairs.metric(full, rows)).sum())
        for index in range(total):
            layer, head = divmod(index, n_heads)
            name = f"blocks.{layer}.attn.hook_z"
            donor = neg_cache[name][:, :, head]

            def patch(z: Tensor, donor: Tensor = donor, head: int = head) -> Tensor:
                z = z.clone()
                z[:, :, head] = donor
                return z

            with adapter.hooks({name: patch}):
                patched = _final_log_probs(adapter, pos_ids, last)
            kl[index] += float(_kl(clean, patched).sum())
            drop[index] += float((clean_metric - pairs.metric(patched, rows)).sum())
    return PatchingResult(
        kl=kl / n,
        metric_drop=drop / n,
        full_kl=full_kl / n,
        full_metric_drop=full_drop / n,
        clean_metric=clean_sum / n,
        seconds=time.perf_counter() - start_time,
    )


def ground_truth_heads(result: PatchingResult, threshold: float) -> Tensor:
    """Return the bool mask `[n_heads_total]` of heads whose normalised KL effect is at least
    `threshold`."""
    return result.normalised_kl() >= threshold


def ground_truth_edges(heads: Tensor, pairs: Tensor) -> Tensor:
    """Return the bool mask `[n_pairs]` of candidate pairs `[n_pairs, 2]` (h1 in an earlier
    layer than h2) whose two heads are both in the ground-truth head set."""
    return heads[pairs[:, 0]] & heads[pairs[:, 1]]
