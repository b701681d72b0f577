"""Final-position logits without unembedding every position (patching runs read only one)."""

from __future__ import annotations

from torch import Tensor

from sparsecircuits.models import ModelAdapter
from sparsecircuits.models.architectures import apply_gain
from sparsecircuits.tasks.common import logits_at_last


def final_logits(adapter: ModelAdapter, input_ids: Tensor, last_pos: Tensor) -> Tensor:
    """Return the logits at each prompt's `last_pos [n]`, `[n, vocab]` float32, computed from
    `ln_final.hook_normalized` (gain, bias and unembedding applied to that position only).

    Differentiable when grad is enabled; hooks active around the call apply as usual.
    """
    _, cache = adapter.run_with_cache(input_ids.to(adapter.device), ["ln_final.hook_normalized"])
    normalized = logits_at_last(cache["ln_final.hook_normalized"], last_pos.to(adapter.device))
    out = apply_gain(normalized, adapter.norm("ln_final")) @ adapter.W_U + adapter.b_U
    return out.float()
