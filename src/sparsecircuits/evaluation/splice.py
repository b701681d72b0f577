"""Next-token loss with a dictionary spliced into the model, against clean and ablated runs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from sparsecircuits.dictionaries import Dictionary
from sparsecircuits.models import ModelAdapter


def _next_token_ce_and_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return summed CE over predicted positions and log-probs `[b, p-1, vocab]`."""
    logprobs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ce = -logprobs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return ce.sum(), logprobs


@torch.no_grad()
def spliced_losses(
    adapter: ModelAdapter,
    dictionary: Dictionary,
    batches: list[torch.Tensor],
    mean_out: torch.Tensor | None = None,
) -> dict[str, float]:
    """Return CE losses of the clean, spliced, zero-ablated and mean-ablated model, and KL.

    `batches` are token tensors `[b, p]`. The dictionary reads `cfg.hook_in` and its output
    replaces `cfg.hook_out`. `mean_out [d_out]` is the activation used for mean ablation (the
    mean of `hook_out` over the window when None). `ce_loss_recovered` is
    `(CE_zero − CE_spliced) / (CE_zero − CE_clean)`; `kl_div` is the mean over predicted tokens
    of KL(clean ‖ spliced).
    """
    hook_in, hook_out = dictionary.cfg.hook_in, dictionary.cfg.hook_out
    if mean_out is None:
        total, count = None, 0
        for ids in batches:
            _, cache = adapter.run_with_cache(ids, [hook_out])
            act = cache[hook_out].reshape(-1, cache[hook_out].shape[-1]).float()
            total = act.sum(0) if total is None else total + act.sum(0)
            count += act.shape[0]
        assert total is not None
        mean_out = total / count

    def reconstruct(act: torch.Tensor) -> torch.Tensor:
        return dictionary.reconstruct(act).to(act.dtype)

    replace_zero: Callable[[torch.Tensor], torch.Tensor] = torch.zeros_like

    def replace_mean(act: torch.Tensor) -> torch.Tensor:
        return mean_out.to(act.dtype).expand_as(act).clone()

    sums = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "mean": 0.0, "kl": 0.0}
    n_tokens = 0
    for ids in batches:
        clean_ce, clean_lp = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        with adapter.splice(hook_in, hook_out, reconstruct):
            spliced_ce, spliced_lp = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        with adapter.hooks({hook_out: replace_zero}):
            zero_ce, _ = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        with adapter.hooks({hook_out: replace_mean}):
            mean_ce, _ = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        kl = (clean_lp.exp() * (clean_lp - spliced_lp)).sum(-1).sum()
        sums["clean"] += float(clean_ce)
        sums["spliced"] += float(spliced_ce)
        sums["zero"] += float(zero_ce)
        sums["mean"] += float(mean_ce)
        sums["kl"] += float(kl)
        n_tokens += ids.shape[0] * (ids.shape[1] - 1)
    ce = {k: v / n_tokens for k, v in sums.items()}
    denom = ce["zero"] - ce["clean"]
    recovered = (ce["zero"] - ce["spliced"]) / denom if abs(denom) > 1e-12 else float("nan")
    mean_denom = ce["mean"] - ce["clean"]
    recovered_mean = (
        (ce["mean"] - ce["spliced"]) / mean_denom if abs(mean_denom) > 1e-12 else float("nan")
    )
    return {
        "ce_loss_clean": ce["clean"],
        "ce_loss_spliced": ce["spliced"],
        "ce_loss_zero_ablated": ce["zero"],
        "ce_loss_mean_ablated": ce["mean"],
        "ce_loss_recovered": recovered,
        "ce_loss_recovered_vs_mean": recovered_mean,
        "kl_div": ce["kl"],
    }
