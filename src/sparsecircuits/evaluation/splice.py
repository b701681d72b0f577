"""Next-token loss with a dictionary spliced into the model, against clean and ablated runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass
class Baseline:
    """What every dictionary spliced at one hook compares against, computed once per hook.

    `clean_logprobs` holds `[b, p-1, vocab]` per batch, or is None when keeping them would pass
    the memory cap (the clean forward is then rerun per dictionary for the KL); the sums are
    summed CE over predicted tokens of the clean, zero-ablated and mean-ablated model;
    `n_tokens` counts those tokens.
    """

    clean_logprobs: list[torch.Tensor] | None
    clean: float
    zero: float
    mean: float
    n_tokens: int


def mean_activation(adapter: ModelAdapter, batches: list[torch.Tensor], hook: str) -> torch.Tensor:
    """Return the mean activation `[d]` at `hook` over every position of `batches`."""
    total, count = None, 0
    for ids in batches:
        _, cache = adapter.run_with_cache(ids, [hook])
        act = cache[hook].reshape(-1, cache[hook].shape[-1]).float()
        total = act.sum(0) if total is None else total + act.sum(0)
        count += act.shape[0]
    assert total is not None
    return total / count


# Cached clean log-probs above this size are dropped (a 50k vocabulary at 8k tokens is 1.6 GB).
MAX_CACHED_LOGPROB_BYTES = 512 * 2**20


@torch.no_grad()
def baseline_losses(
    adapter: ModelAdapter,
    batches: list[torch.Tensor],
    hook_out: str,
    mean_out: torch.Tensor,
    max_cache_bytes: int = MAX_CACHED_LOGPROB_BYTES,
) -> Baseline:
    """Run the clean model and the zero- and mean-ablated model at `hook_out` once.

    Returns a `Baseline`; its clean log-probs are kept only if they fit in `max_cache_bytes`.
    """

    def replace_mean(act: torch.Tensor) -> torch.Tensor:
        return mean_out.to(act.dtype).expand_as(act).clone()

    replace_zero: Callable[[torch.Tensor], torch.Tensor] = torch.zeros_like
    logprobs: list[torch.Tensor] | None = []
    kept_bytes, clean, zero, mean, n_tokens = 0, 0.0, 0.0, 0.0, 0
    for ids in batches:
        clean_ce, clean_lp = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        with adapter.hooks({hook_out: replace_zero}):
            zero_ce, _ = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        with adapter.hooks({hook_out: replace_mean}):
            mean_ce, _ = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        kept_bytes += clean_lp.numel() * clean_lp.element_size()
        logprobs = (
            logprobs + [clean_lp]
            if logprobs is not None and kept_bytes <= max_cache_bytes
            else None
        )
        clean += float(clean_ce)
        zero += float(zero_ce)
        mean += float(mean_ce)
        n_tokens += ids.shape[0] * (ids.shape[1] - 1)
    return Baseline(logprobs, clean, zero, mean, n_tokens)


@torch.no_grad()
def spliced_losses(
    adapter: ModelAdapter,
    dictionary: Dictionary,
    batches: list[torch.Tensor],
    mean_out: torch.Tensor | None = None,
    baseline: Baseline | None = None,
) -> dict[str, float]:
    """Return CE losses of the clean, spliced, zero-ablated and mean-ablated model, and KL.

    `batches` are token tensors `[b, p]`. The dictionary reads `cfg.hook_in` and its output
    replaces `cfg.hook_out`. `mean_out [d_out]` is the activation used for mean ablation (the
    mean of `hook_out` over the window when None). `baseline` (from `baseline_losses` on the
    same batches and hook) skips recomputing the clean and ablated runs. `ce_loss_recovered` is
    `(CE_zero − CE_spliced) / (CE_zero − CE_clean)`; `kl_div` is the mean over predicted tokens
    of KL(clean ‖ spliced).
    """
    hook_in, hook_out = dictionary.cfg.hook_in, dictionary.cfg.hook_out
    if baseline is None:
        if mean_out is None:
            mean_out = mean_activation(adapter, batches, hook_out)
        baseline = baseline_losses(adapter, batches, hook_out, mean_out)

    def reconstruct(act: torch.Tensor) -> torch.Tensor:
        return dictionary.reconstruct(act).to(act.dtype)

    spliced, kl = 0.0, 0.0
    for i, ids in enumerate(batches):
        if baseline.clean_logprobs is not None:
            clean_lp = baseline.clean_logprobs[i]
        else:
            _, clean_lp = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        with adapter.splice(hook_in, hook_out, reconstruct):
            spliced_ce, spliced_lp = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        spliced += float(spliced_ce)
        kl += float((clean_lp.exp() * (clean_lp - spliced_lp)).sum())
    n = baseline.n_tokens
    ce = {
        "clean": baseline.clean / n,
        "spliced": spliced / n,
        "zero": baseline.zero / n,
        "mean": baseline.mean / n,
        "kl": kl / n,
    }
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
