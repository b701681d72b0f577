"""Next-token loss with a dictionary spliced into the model (every output it writes at once),
against clean and ablated runs (docs/internals.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsecircuits.dictionaries import SparseCoder
from sparsecircuits.errors import SparseCircuitsError
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
    """The clean and ablated runs every dictionary spliced at one set of hooks compares against.

    `clean_logprobs`: `[b, p-1, vocab]` per batch, or None past the memory cap (the clean forward
    is then rerun for the KL); `clean`, `zero`, `mean`: summed CE over `n_tokens` predicted tokens.
    """

    clean_logprobs: list[torch.Tensor] | None
    clean: float
    zero: float
    mean: float
    n_tokens: int


def mean_activations(
    adapter: ModelAdapter, batches: list[torch.Tensor], hooks: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Return `{hook: mean activation [d]}` over every position of `batches` (one pass for all)."""
    totals: dict[str, torch.Tensor] = {}
    count = 0
    for ids in batches:
        _, cache = adapter.run_with_cache(ids, list(hooks))
        for hook in hooks:
            act = cache[hook].reshape(-1, cache[hook].shape[-1]).float()
            totals[hook] = act.sum(0) if hook not in totals else totals[hook] + act.sum(0)
        count += ids.shape[0] * ids.shape[1]
    if not totals:
        raise SparseCircuitsError("no batches to average activations over; pass token batches")
    return {hook: total / count for hook, total in totals.items()}


def spliced_hooks(dictionary: SparseCoder) -> tuple[str, ...]:
    """Return the hooks a splice of `dictionary` replaces: its output hook, one per layer."""
    return tuple(dictionary.cfg.layer_hooks()[1])


def check_splice_hooks(
    adapter: ModelAdapter, hooks_in: Sequence[str], hooks_out: Sequence[str]
) -> None:
    """Raise unless a dictionary reading `hooks_in` and writing `hooks_out` (one pair per layer)
    can be spliced: model hooks (no attention pattern), distinct across layers, each input no later
    than its output."""
    per_layer = [{hook_in, hook_out} for hook_in, hook_out in zip(hooks_in, hooks_out, strict=True)]
    if sum(len(hooks) for hooks in per_layer) != len(set().union(*per_layer)):
        raise SparseCircuitsError(
            "a dictionary spanning several layers needs distinct hooks per layer; "
            f"got inputs {list(hooks_in)} and outputs {list(hooks_out)}"
        )
    for hook_in, hook_out in zip(hooks_in, hooks_out, strict=True):
        adapter.splice_points(hook_in, hook_out)


@contextlib.contextmanager
def splice(adapter: ModelAdapter, dictionary: SparseCoder) -> Iterator[ModelAdapter]:
    """Context manager: every output hook of `dictionary` becomes its reconstruction, all at once.

    Each layer ℓ's input hook (`[b, p, d_in]`, or hook_z's `[b, p, heads, d_head]`) is encoded and its
    `layer_writes` added to the pending outputs of layers t >= ℓ; output t is replaced by `ŷ_t`. The
    inputs are those of the spliced pass, so errors propagate as in a replacement model.
    """
    hooks_in, hooks_out = dictionary.cfg.layer_hooks()
    check_splice_hooks(adapter, hooks_in, hooks_out)
    layers, n_layers = dictionary.layers, len(hooks_in)
    pending: list[torch.Tensor | None] = [None] * n_layers  # ŷ_t, [b·p, d_out]
    read = [0]  # layers whose input this forward pass has encoded

    def encode(index: int) -> Callable[[torch.Tensor], None]:
        def fn(act: torch.Tensor) -> None:
            if index == 0:  # a new forward pass
                pending[:] = [None] * n_layers
                read[0] = 0
            if read[0] != index:
                raise RuntimeError(f"splice: {hooks_in[index]} ran out of layer order")
            written = dictionary.layer_writes(act.reshape(-1, dictionary.d_in), layers[index])
            for offset in range(written.shape[1]):
                before = pending[index + offset]
                block = written[:, offset]
                pending[index + offset] = block if before is None else before + block
            read[0] = index + 1

        return fn

    def replace(index: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(act: torch.Tensor) -> torch.Tensor:
            out = pending[index]
            if read[0] <= index or out is None:
                raise RuntimeError(f"splice: {hooks_out[index]} ran before {hooks_in[index]}")
            pending[index] = None
            return out.reshape(act.shape).to(act.dtype)

        return fn

    hook_fns: dict[str, Callable[[torch.Tensor], torch.Tensor | None]] = {}
    for index in range(n_layers):
        if hooks_in[index] == hooks_out[index]:
            hook_fns[hooks_in[index]] = _encode_then_replace(encode(index), replace(index))
        else:
            hook_fns[hooks_in[index]] = encode(index)
            hook_fns[hooks_out[index]] = replace(index)
    with adapter.hooks(hook_fns):
        yield adapter


def _encode_then_replace(
    encode: Callable[[torch.Tensor], None], replace: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(act: torch.Tensor) -> torch.Tensor:
        encode(act)
        return replace(act)

    return fn


# Cached clean log-probs above this size are dropped (a 50k vocabulary at 8k tokens is 1.6 GB).
MAX_CACHED_LOGPROB_BYTES = 512 * 2**20


@torch.no_grad()
def baseline_losses(
    adapter: ModelAdapter,
    batches: list[torch.Tensor],
    hooks_out: Sequence[str],
    means: Mapping[str, torch.Tensor],
    max_cache_bytes: int = MAX_CACHED_LOGPROB_BYTES,
) -> Baseline:
    """Run the clean model and the model with every hook of `hooks_out` zero- or mean-ablated
    (`means = {hook: [d]}`) once. Returns a `Baseline`; its clean log-probs are kept only if
    they fit in `max_cache_bytes`.
    """
    missing = [hook for hook in hooks_out if hook not in means]
    if missing:
        raise SparseCircuitsError(f"baseline_losses has no mean for {', '.join(missing)}")

    replace_zero: Callable[[torch.Tensor], torch.Tensor] = torch.zeros_like
    zero_hooks = dict.fromkeys(hooks_out, replace_zero)
    mean_hooks = {
        hook: lambda act, m=means[hook]: m.to(act.dtype).expand_as(act).clone()
        for hook in hooks_out
    }
    logprobs: list[torch.Tensor] | None = []
    kept_bytes, clean, zero, mean, n_tokens = 0, 0.0, 0.0, 0.0, 0
    for ids in batches:
        clean_ce, clean_lp = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        with adapter.hooks(zero_hooks):
            zero_ce, _ = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        with adapter.hooks(mean_hooks):
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
    dictionary: SparseCoder,
    batches: list[torch.Tensor],
    mean_out: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    baseline: Baseline | None = None,
) -> dict[str, float]:
    """Return `ce_loss_clean`, `ce_loss_spliced`, `ce_loss_zero_ablated`, `ce_loss_mean_ablated`
    (mean CE per predicted token of `batches [b, p]`), `ce_loss_recovered = (CE_zero − CE_spliced) /
    (CE_zero − CE_clean)`, `ce_loss_recovered_vs_mean` and `kl_div` (mean KL(clean ‖ spliced)).

    A cross-layer transcoder is spliced (`splice`) and ablated at all its outputs at once. `mean_out`
    (`[d_out]`; a CLT: `{hook_out: [d_out]}`) is the mean-ablation value, the window's mean when None;
    `baseline` (`baseline_losses` on the same batches and hooks) skips the clean and ablated runs.
    """
    if baseline is None:
        hooks_out = spliced_hooks(dictionary)
        means: Mapping[str, torch.Tensor]
        if mean_out is None:
            means = mean_activations(adapter, batches, hooks_out)
        elif isinstance(mean_out, Mapping):
            means = mean_out
        elif len(hooks_out) == 1:
            means = {hooks_out[0]: mean_out}
        else:
            raise SparseCircuitsError(
                "mean_out of a cross-layer transcoder is {hook_out: mean [d_out]} per layer"
            )
        baseline = baseline_losses(adapter, batches, hooks_out, means)

    spliced, kl = 0.0, 0.0
    for i, ids in enumerate(batches):
        if baseline.clean_logprobs is not None:
            clean_lp = baseline.clean_logprobs[i]
        else:
            _, clean_lp = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        with splice(adapter, dictionary):
            spliced_ce, spliced_lp = _next_token_ce_and_logprobs(adapter.forward(ids), ids)
        spliced += float(spliced_ce)
        kl += float((clean_lp.exp() * (clean_lp - spliced_lp)).sum())
    n = baseline.n_tokens
    clean, zero, mean, spliced = (
        baseline.clean / n,
        baseline.zero / n,
        baseline.mean / n,
        spliced / n,
    )
    return {
        "ce_loss_clean": clean,
        "ce_loss_spliced": spliced,
        "ce_loss_zero_ablated": zero,
        "ce_loss_mean_ablated": mean,
        "ce_loss_recovered": _recovered(zero, clean, spliced),
        "ce_loss_recovered_vs_mean": _recovered(mean, clean, spliced),
        "kl_div": kl / n,
    }


def _recovered(ablated: float, clean: float, spliced: float) -> float:
    """`(ablated - spliced) / (ablated - clean)`; NaN when the ablation changes nothing."""
    denom = ablated - clean
    return (ablated - spliced) / denom if abs(denom) > 1e-12 else float("nan")
