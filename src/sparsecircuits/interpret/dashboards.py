"""Feature dashboards for every latent of one or more dictionaries, from ONE pass over a dataset.

Per latent: the top activating examples (a context window around the token, with the latent's
activation on every window token), a uniform random sample of its activating tokens (grouped into
activation quantiles when shown), a histogram of log10 activation, firing density, mean and
max activation, and two weight-based views — output logits (`W_dec` through the final norm's gain
and `W_U`, for dictionaries writing to the residual stream) and de-embeddings (`W_E` through the
input hook's norm, then `W_enc`).

The hot path keeps fixed-size tensors per dictionary and updates them per batch with one
`torch.topk` over the batch's candidates concatenated with the kept ones: no Python loop runs
over latents. The random sample uses the same update with random priority keys (priority
sampling: the k largest of i.i.d. uniform keys over the active tokens is a uniform sample).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from sparsecircuits.errors import SparseCircuitsError

# Hooks whose activation is added straight into the residual stream, so W_dec @ W_U is meaningful.
RESIDUAL_WRITERS = ("hook_mlp_out", "hook_attn_out", "hook_resid_pre", "hook_resid_mid", "hook_resid_post")


@dataclass
class DashboardConfig:
    """How much to keep per latent, and how to read the dataset."""

    n_top: int = 20  # top activating examples per latent
    n_samples: int = 40  # random activating tokens per latent (shown grouped by quantile)
    n_quantiles: int = 5
    context_left: int = 12  # tokens shown before the activating token
    context_right: int = 4  # and after it
    n_logits: int = 10  # top and bottom output logits per latent
    n_deembed: int = 10  # top de-embedding tokens per latent
    hist_bins: int = 48
    hist_log10_min: float = -3.0
    hist_log10_max: float = 3.0
    skip_first_position: bool = True  # packed contexts start with BOS, whose activations are outliers
    seed: int = 0

    @property
    def window(self) -> int:
        """Tokens in one example window."""
        return self.context_left + 1 + self.context_right


@dataclass
class FeatureDashboards:
    """The dashboards of one dictionary, as tensors indexed by latent (`d_sae` first).

    `*_token_ids` windows hold -1 outside the context. `top_acts`/`sample_acts` are the
    activations at the centre token (0 = empty slot). `hist_counts [d_sae, hist_bins]` counts
    tokens per log10 |activation| bin (edges in `hist_edges`). Logit/de-embedding tables are None
    when not meaningful for the dictionary's hooks.
    """

    name: str
    hook_in: str
    hook_out: str
    layer: int | None
    kind: str
    d_sae: int
    n_tokens: int
    config: DashboardConfig
    top_acts: Tensor  # [d_sae, n_top]
    top_token_ids: Tensor  # [d_sae, n_top, window] int32
    top_window_acts: Tensor  # [d_sae, n_top, window]
    sample_acts: Tensor  # [d_sae, n_samples]
    sample_token_ids: Tensor  # [d_sae, n_samples, window] int32
    sample_window_acts: Tensor  # [d_sae, n_samples, window]
    fire_counts: Tensor  # [d_sae] int64
    act_sums: Tensor  # [d_sae] float64, over firing tokens
    max_acts: Tensor  # [d_sae]
    hist_counts: Tensor  # [d_sae, hist_bins] int64
    hist_edges: Tensor  # [hist_bins + 1] activation values (10 ** log10 edges)
    top_logit_ids: Tensor | None = None  # [d_sae, n_logits]
    top_logit_values: Tensor | None = None
    bottom_logit_ids: Tensor | None = None
    bottom_logit_values: Tensor | None = None
    deembed_ids: Tensor | None = None  # [d_sae, n_deembed]
    deembed_values: Tensor | None = None
    token_strings: dict[int, str] = field(default_factory=dict)
    model_name: str = ""

    @property
    def density(self) -> Tensor:
        """Fraction of tokens on which each latent fires, `[d_sae]`."""
        return self.fire_counts.double() / max(self.n_tokens, 1)


class _Accumulator:
    """Fixed-size running state of one dictionary's dashboards."""

    def __init__(self, d_sae: int, cfg: DashboardConfig, device: torch.device) -> None:
        window = cfg.window
        self.cfg = cfg
        self.d_sae = d_sae
        self.top_acts = torch.zeros(d_sae, 0, device=device)
        self.top_ids = torch.zeros(d_sae, 0, window, dtype=torch.int32, device=device)
        self.top_wacts = torch.zeros(d_sae, 0, window, device=device)
        self.sample_keys = torch.zeros(d_sae, 0, device=device)
        self.sample_acts = torch.zeros(d_sae, 0, device=device)
        self.sample_ids = torch.zeros(d_sae, 0, window, dtype=torch.int32, device=device)
        self.sample_wacts = torch.zeros(d_sae, 0, window, device=device)
        self.fire_counts = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.act_sums = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.max_acts = torch.zeros(d_sae, device=device)
        self.hist = torch.zeros(d_sae * cfg.hist_bins, dtype=torch.int64, device=device)
        self.n_tokens = 0

    def update(self, acts: Tensor, input_ids: Tensor, valid: Tensor, generator: torch.Generator) -> None:
        """Fold one batch in: `acts [b, p, d_sae]`, `input_ids [b, p]`, `valid [b, p]` bool."""
        cfg = self.cfg
        acts = acts * valid[..., None]
        flat = acts.reshape(-1, self.d_sae)
        n = flat.shape[0]
        self.n_tokens += int(valid.sum())
        firing = flat != 0
        self.fire_counts += firing.sum(0)
        self.act_sums += flat.sum(0, dtype=torch.float64)
        self.max_acts = torch.maximum(self.max_acts, flat.max(0).values)
        self._histogram(flat, firing)

        k = min(cfg.n_top, n)
        values, rows = flat.topk(k, dim=0)  # [k, d_sae]
        ids, wacts = _windows(acts, input_ids, rows, cfg.context_left, cfg.context_right)
        self.top_acts, self.top_ids, self.top_wacts = _merge(
            self.top_acts, self.top_ids, self.top_wacts, values.T, ids, wacts, cfg.n_top,
            others=(),
        )

        s = min(cfg.n_samples, n)
        keys = torch.rand(flat.shape, generator=generator, device="cpu").to(flat.device)
        keys = torch.where(firing, keys, torch.full_like(keys, -1.0))
        key_values, rows = keys.topk(s, dim=0)
        sample_acts = flat.gather(0, rows)
        ids, wacts = _windows(acts, input_ids, rows, cfg.context_left, cfg.context_right)
        merged = _merge(self.sample_keys, self.sample_ids, self.sample_wacts, key_values.T, ids, wacts,
                        cfg.n_samples, others=((self.sample_acts, sample_acts.T),))
        self.sample_keys, self.sample_ids, self.sample_wacts, self.sample_acts = merged

    def _histogram(self, flat: Tensor, firing: Tensor) -> None:
        cfg = self.cfg
        token_idx, feat_idx = firing.nonzero(as_tuple=True)
        if token_idx.numel() == 0:
            return
        log_act = flat[token_idx, feat_idx].abs().log10()
        span = cfg.hist_log10_max - cfg.hist_log10_min
        bins = ((log_act - cfg.hist_log10_min) / span * cfg.hist_bins).floor().clamp(0, cfg.hist_bins - 1)
        self.hist += torch.bincount(feat_idx * cfg.hist_bins + bins.long(), minlength=self.hist.numel())


def _windows(acts: Tensor, input_ids: Tensor, rows: Tensor, left: int, right: int) -> tuple[Tensor, Tensor]:
    """Windows around flat token indices `rows [k, d_sae]` of a batch.

    Returns token ids `[d_sae, k, window]` (int32, -1 outside the context) and the latent's own
    activation on each window token `[d_sae, k, window]`.
    """
    b, p, d_sae = acts.shape
    seq, pos = rows // p, rows % p
    offsets = torch.arange(-left, right + 1, device=acts.device)
    window_pos = pos[..., None] + offsets  # [k, d_sae, W]
    inside = (window_pos >= 0) & (window_pos < p)
    token_flat = seq[..., None] * p + window_pos.clamp(0, p - 1)
    ids = input_ids.reshape(-1)[token_flat].to(torch.int32).masked_fill(~inside, -1)
    feature = torch.arange(d_sae, device=acts.device)[None, :, None]
    window_acts = acts.reshape(-1)[token_flat * d_sae + feature].masked_fill(~inside, 0.0)
    return ids.permute(1, 0, 2), window_acts.permute(1, 0, 2)


def _merge(
    keys: Tensor, ids: Tensor, wacts: Tensor, new_keys: Tensor, new_ids: Tensor, new_wacts: Tensor,
    size: int, others: tuple[tuple[Tensor, Tensor], ...],
) -> tuple[Tensor, ...]:
    """Keep, per latent, the `size` entries with the largest keys among old and new ones."""
    all_keys = torch.cat([keys, new_keys], dim=1)
    kept_keys, order = all_keys.topk(min(size, all_keys.shape[1]), dim=1)
    window_order = order[..., None].expand(-1, -1, ids.shape[-1])
    out: list[Tensor] = [
        kept_keys,
        torch.cat([ids, new_ids], dim=1).gather(1, window_order),
        torch.cat([wacts, new_wacts], dim=1).gather(1, window_order),
    ]
    out.extend(torch.cat([old, new], dim=1).gather(1, order) for old, new in others)
    return tuple(out)


def compute_dashboards(
    adapter: Any,
    dictionaries: Mapping[str, Any],
    token_batches: Iterable[Tensor],
    config: DashboardConfig | None = None,
    *,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict[str, FeatureDashboards]:
    """Return `{name: FeatureDashboards}` for every dictionary, from one pass over `token_batches`.

    `token_batches` yields `input_ids [batch, pos]`; each batch runs the model once (stopping after
    the last hooked layer) and feeds every dictionary reading one of its `hook_in`s. Stops after
    `max_tokens` tokens when given.
    """
    cfg = config or DashboardConfig()
    if not dictionaries:
        raise SparseCircuitsError("compute_dashboards got no dictionaries; pass at least one")
    hooks = sorted({d.cfg.hook_in for d in dictionaries.values()}, key=lambda h: adapter.hook_point(h).order)
    for name, dictionary in dictionaries.items():
        if adapter.hook_dim(dictionary.cfg.hook_in) != dictionary.d_in:
            raise SparseCircuitsError(
                f"dictionary {name} reads {dictionary.cfg.hook_in} with d_in={dictionary.d_in}, but the model's "
                f"width there is {adapter.hook_dim(dictionary.cfg.hook_in)}; use dictionaries trained on this model"
            )
    device = adapter.device
    accs = {name: _Accumulator(d.d_sae, cfg, device) for name, d in dictionaries.items()}
    generator = torch.Generator().manual_seed(cfg.seed)
    seen_ids: set[int] = set()
    n_seen = 0
    bar = tqdm(total=max_tokens, unit="tok", disable=not progress, desc="dashboards")
    with torch.no_grad():
        for input_ids in token_batches:
            if input_ids.ndim == 1:
                input_ids = input_ids[None]
            if max_tokens is not None and n_seen >= max_tokens:
                break
            input_ids = input_ids.to(device)
            _, cache = adapter.run_with_cache(input_ids, hooks=hooks, stop_after_last=True)
            valid = torch.ones(input_ids.shape, dtype=torch.bool, device=device)
            if cfg.skip_first_position:
                valid[:, 0] = False
            for name, dictionary in dictionaries.items():
                mlp_in = cache[dictionary.cfg.hook_in]
                acts = dictionary.encode(mlp_in.reshape(-1, mlp_in.shape[-1])).float()
                accs[name].update(acts.reshape(*input_ids.shape, -1), input_ids, valid, generator)
            n_seen += input_ids.numel()
            bar.update(input_ids.numel())
    bar.close()
    if n_seen == 0:
        raise SparseCircuitsError("the dataset gave no token batches; pass a non-empty dataset")
    results: dict[str, FeatureDashboards] = {}
    for name, dictionary in dictionaries.items():
        results[name] = _finish(name, dictionary, accs[name], adapter, cfg)
        seen_ids.update(_referenced_ids(results[name]))
    strings = _token_strings(adapter.tokenizer, seen_ids)
    for dash in results.values():
        dash.token_strings = {i: strings[i] for i in _referenced_ids(dash)}
    return results


def _finish(name: str, dictionary: Any, acc: _Accumulator, adapter: Any, cfg: DashboardConfig) -> FeatureDashboards:
    dcfg = dictionary.cfg
    edges = torch.logspace(cfg.hist_log10_min, cfg.hist_log10_max, cfg.hist_bins + 1)
    # Slots never filled (latent fired fewer times than the sample size) carry key -1: blank them.
    empty = acc.sample_keys < 0
    sample_acts = acc.sample_acts.masked_fill(empty, 0.0)
    sample_ids = acc.sample_ids.masked_fill(empty[..., None], -1)
    dash = FeatureDashboards(
        name=name, hook_in=dcfg.hook_in, hook_out=dcfg.hook_out, layer=_layer(dcfg.hook_in),
        kind=dcfg.kind, d_sae=dictionary.d_sae, n_tokens=acc.n_tokens, config=cfg,
        top_acts=acc.top_acts.cpu(), top_token_ids=acc.top_ids.cpu(), top_window_acts=acc.top_wacts.cpu(),
        sample_acts=sample_acts.cpu(), sample_token_ids=sample_ids.cpu(),
        sample_window_acts=acc.sample_wacts.masked_fill(empty[..., None], 0.0).cpu(),
        fire_counts=acc.fire_counts.cpu(), act_sums=acc.act_sums.cpu(), max_acts=acc.max_acts.cpu(),
        hist_counts=acc.hist.view(dictionary.d_sae, cfg.hist_bins).cpu(), hist_edges=edges,
        model_name=getattr(adapter, "name", ""),
    )
    logits = output_logit_tables(adapter, dictionary, cfg.n_logits)
    if logits is not None:
        dash.top_logit_ids, dash.top_logit_values, dash.bottom_logit_ids, dash.bottom_logit_values = logits
    deembed = deembedding_tables(adapter, dictionary, cfg.n_deembed)
    if deembed is not None:
        dash.deembed_ids, dash.deembed_values = deembed
    return dash


def _layer(hook: str) -> int | None:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def _chunk_size(vocab: int) -> int:
    return max(1, (1 << 24) // max(vocab, 1))  # ~64 MB of fp32 scores per chunk


@torch.no_grad()
def output_logit_tables(adapter: Any, dictionary: Any, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Top and bottom `n` direct logit effects of each latent's decoder row.

    The row goes through the final norm as a direction (LayerNorm centring, gain; the scale is a
    per-token constant) and `W_U`. Returns `(top_ids, top_values, bottom_ids, bottom_values)`, each
    `[d_sae, n]`, or None when the dictionary does not write to the residual stream.
    """
    kind = adapter.hook_point(dictionary.cfg.hook_out).kind
    if kind not in RESIDUAL_WRITERS or dictionary.d_out != adapter.d_model:
        return None
    final = adapter.norm("ln_final")
    W_U = adapter.W_U.float()
    n = min(n, W_U.shape[1])
    outs: list[list[Tensor]] = [[], [], [], []]
    for start in range(0, dictionary.d_sae, _chunk_size(W_U.shape[1])):
        rows = dictionary.W_dec[start : start + _chunk_size(W_U.shape[1])].detach().float().to(W_U.device)
        if final.kind == "layernorm":
            rows = rows - rows.mean(-1, keepdim=True)
        scores = (rows * final.weight.float()) @ W_U
        top = scores.topk(n, dim=1)
        bottom = scores.topk(n, dim=1, largest=False)
        for out, t in zip(outs, (top.indices, top.values, bottom.indices, bottom.values), strict=True):
            out.append(t.cpu())
    return tuple(torch.cat(o) for o in outs)  # type: ignore[return-value]


@torch.no_grad()
def deembedding_tables(adapter: Any, dictionary: Any, n: int) -> tuple[Tensor, Tensor] | None:
    """The `n` tokens whose embedding most excites each latent: `W_E` through the input hook's
    norm (full norm for `hook_mlp_in`, unscaled for `ln2.hook_normalized`, none for residual
    hooks), minus `b_in`, then `W_enc`. Returns `(ids, values)` `[d_sae, n]`, or None when the
    dictionary reads something other than the residual stream or an MLP input.
    """
    from sparsecircuits.models.architectures import apply_gain, normalize

    point = adapter.hook_point(dictionary.cfg.hook_in)
    W_E = adapter.W_E.float()
    if point.kind == "hook_mlp_in":
        params = adapter.norm("ln2", point.layer)
        embed = apply_gain(normalize(W_E, params), params).float()
    elif point.kind == "ln2.hook_normalized":
        embed = normalize(W_E, adapter.norm("ln2", point.layer)).float()
    elif point.kind in ("hook_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post"):
        embed = W_E
    else:
        return None
    if embed.shape[1] != dictionary.d_in:
        return None
    embed = embed - dictionary.b_in.detach().float().to(embed.device)
    n = min(n, embed.shape[0])
    ids: list[Tensor] = []
    values: list[Tensor] = []
    step = _chunk_size(embed.shape[0])
    for start in range(0, dictionary.d_sae, step):
        scores = embed @ dictionary.W_enc[:, start : start + step].detach().float().to(embed.device)
        top = scores.topk(n, dim=0)
        ids.append(top.indices.T.cpu())
        values.append(top.values.T.cpu())
    return torch.cat(ids), torch.cat(values)


def _referenced_ids(dash: FeatureDashboards) -> set[int]:
    tensors = [dash.top_token_ids, dash.sample_token_ids, dash.top_logit_ids, dash.bottom_logit_ids, dash.deembed_ids]
    ids: set[int] = set()
    for t in tensors:
        if t is not None:
            ids.update(int(i) for i in torch.unique(t).tolist() if i >= 0)
    return ids


def _token_strings(tokenizer: Any, ids: set[int]) -> dict[int, str]:
    ordered = sorted(ids)
    if not ordered:
        return {}
    texts = tokenizer.batch_decode([[i] for i in ordered], clean_up_tokenization_spaces=False)
    return dict(zip(ordered, texts, strict=True))


def quantile_edges(n_quantiles: int) -> list[float]:
    """Fractions splitting a sample into `n_quantiles` equal-count groups, e.g. [0, .2, ..., 1]."""
    return [i / n_quantiles for i in range(n_quantiles + 1)]


def log_bin_centres(edges: Tensor) -> list[float]:
    """Geometric centres of log-spaced histogram bins."""
    return [math.sqrt(float(a) * float(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
