"""Feature dashboards for every latent of one or more dictionaries, from ONE pass over a dataset
(what a dashboard holds in docs/internals.md)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm import tqdm

from sparsecircuits.dictionaries.config import hook_layer
from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from sparsecircuits.dictionaries import SparseCoder
    from sparsecircuits.models import ModelAdapter

# Hooks whose activation is added straight into the residual stream, so W_dec @ W_U is meaningful.
RESIDUAL_WRITERS = (
    "hook_mlp_out",
    "mlp.hook_out",  # the same tensor as hook_mlp_out in families without a post-MLP norm
    "hook_attn_out",
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
)


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
    # packed contexts start with BOS, whose activations are outliers
    skip_first_position: bool = True
    seed: int = 0

    @property
    def window(self) -> int:
        """Tokens in one example window."""
        return self.context_left + 1 + self.context_right


@dataclass
class FeatureDashboards:
    """The dashboards of one dictionary, as tensors indexed by latent (`d_sae` first).

    Windows hold -1 outside the context; `top_acts`/`sample_acts` are centre-token activations (0 =
    empty slot); `hist_counts [d_sae, hist_bins]` counts log10 |activation| bins (`hist_edges`).
    Logit / de-embedding tables are None where the hooks make them meaningless.
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
        # kept entries grow to n_top / n_samples
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

    def update(
        self, acts: Tensor, input_ids: Tensor, valid: Tensor, generator: torch.Generator
    ) -> None:
        """Fold one batch in (`acts [b, p, d_sae]`, `input_ids [b, p]`, `valid [b, p]` bool), at a
        cost that follows the non-zero activations."""
        cfg = self.cfg
        acts = acts * valid[..., None]
        flat = acts.reshape(-1, self.d_sae)
        self.n_tokens += int(valid.sum())
        token_idx, feat_idx = (flat != 0).nonzero(as_tuple=True)
        values = flat[token_idx, feat_idx]
        self.fire_counts += torch.bincount(feat_idx, minlength=self.d_sae)
        self.act_sums.index_add_(0, feat_idx, values.double())
        self.max_acts = self.max_acts.scatter_reduce(0, feat_idx, values, reduce="amax")
        self._histogram(values, feat_idx)

        rows, keys = _per_latent_top(feat_idx, token_idx, values, self.d_sae, cfg.n_top, empty=0.0)
        self.top_acts, self.top_ids, self.top_wacts = _merge(
            self.top_acts, self.top_ids, self.top_wacts, keys, rows, acts, input_ids, cfg
        )

        random_keys = torch.rand(values.shape, generator=generator).to(values.device)
        rows, keys = _per_latent_top(
            feat_idx, token_idx, random_keys, self.d_sae, cfg.n_samples, empty=-1.0
        )
        sample_acts = torch.where(
            keys >= 0,
            flat[rows, torch.arange(self.d_sae, device=flat.device)[:, None]],
            torch.zeros_like(keys),
        )
        self.sample_keys, self.sample_ids, self.sample_wacts, self.sample_acts = _merge(
            self.sample_keys,
            self.sample_ids,
            self.sample_wacts,
            keys,
            rows,
            acts,
            input_ids,
            cfg,
            other=(self.sample_acts, sample_acts),
        )

    def _histogram(self, values: Tensor, feat_idx: Tensor) -> None:
        cfg = self.cfg
        if values.numel() == 0:
            return
        span = cfg.hist_log10_max - cfg.hist_log10_min
        bins = (
            ((values.abs().log10() - cfg.hist_log10_min) / span * cfg.hist_bins)
            .floor()
            .clamp(0, cfg.hist_bins - 1)
        )
        self.hist += torch.bincount(
            feat_idx * cfg.hist_bins + bins.long(), minlength=self.hist.numel()
        )


def _descending_bits(values: Tensor) -> Tensor:
    """int64 in [0, 2^32) that sorts ascending as float32 `values` sort descending."""
    bits = values.float().contiguous().view(torch.int32).long()
    ordered = torch.where(bits >= 0, bits, -(2**31) - bits)  # monotonic in the float value
    return (2**31 - 1) - ordered


def _per_latent_top(
    feat_idx: Tensor, token_idx: Tensor, keys: Tensor, d_sae: int, size: int, empty: float
) -> tuple[Tensor, Tensor]:
    """The `size` firing tokens with the largest `keys` per latent: `rows [d_sae, size]` (flat token
    indices, 0 when empty) and their keys (`empty` when empty), from one sort on (latent, key)."""
    order = torch.sort((feat_idx << 32) | _descending_bits(keys)).indices
    feats = feat_idx[order]
    counts = torch.bincount(feats, minlength=d_sae)
    group_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(feats.numel(), device=feats.device) - group_start[feats]
    keep = rank < size
    rows = torch.zeros(d_sae, size, dtype=torch.long, device=keys.device)
    out_keys = torch.full((d_sae, size), empty, dtype=keys.dtype, device=keys.device)
    rows[feats[keep], rank[keep]] = token_idx[order][keep]
    out_keys[feats[keep], rank[keep]] = keys[order][keep]
    return rows, out_keys


def _windows(
    acts: Tensor, input_ids: Tensor, rows: Tensor, features: Tensor, left: int, right: int
) -> tuple[Tensor, Tensor]:
    """Windows around flat token indices `rows [n]` for latents `features [n]`: token ids
    `[n, window]` (int32, -1 outside the context) and the latent's activation on them."""
    b, p, d_sae = acts.shape
    seq, pos = rows // p, rows % p
    window_pos = pos[:, None] + torch.arange(-left, right + 1, device=acts.device)
    inside = (window_pos >= 0) & (window_pos < p)
    token_flat = seq[:, None] * p + window_pos.clamp(0, p - 1)
    ids = input_ids.reshape(-1)[token_flat].to(torch.int32).masked_fill(~inside, -1)
    window_acts = acts.reshape(-1)[token_flat * d_sae + features[:, None]].masked_fill(~inside, 0.0)
    return ids, window_acts


def _merge(
    keys: Tensor,
    ids: Tensor,
    wacts: Tensor,
    new_keys: Tensor,
    new_rows: Tensor,
    acts: Tensor,
    input_ids: Tensor,
    cfg: DashboardConfig,
    other: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, ...]:
    """Keep, per latent, the entries with the largest keys among the kept and the new ones (windows
    are cut only for new entries that made it in)."""
    size, n_old = new_keys.shape[1], keys.shape[1]
    kept_keys, order = torch.cat([keys, new_keys], dim=1).topk(size, dim=1)
    window = cfg.window
    if n_old:
        old_slot = order.clamp(max=n_old - 1)[..., None].expand(-1, -1, window)
        out_ids, out_wacts = ids.gather(1, old_slot), wacts.gather(1, old_slot)
    else:
        out_ids = torch.empty(order.shape + (window,), dtype=torch.int32, device=order.device)
        out_wacts = torch.empty(order.shape + (window,), dtype=wacts.dtype, device=order.device)
    feature, slot = (order >= n_old).nonzero(as_tuple=True)
    rows = new_rows[feature, order[feature, slot] - n_old]
    new_ids, new_wacts = _windows(
        acts, input_ids, rows, feature, cfg.context_left, cfg.context_right
    )
    out_ids[feature, slot] = new_ids
    out_wacts[feature, slot] = new_wacts
    out = [kept_keys, out_ids, out_wacts]
    if other is not None:
        old, new = other
        out.append(torch.cat([old, new], dim=1).gather(1, order))
    return tuple(out)


@dataclass(frozen=True)
class FeatureLayer:
    """One layer of a dictionary's features, as dashboards read them: `encode(x [n, d_in]) -> [n,
    d_sae]`, `W_enc [d_in, d_sae]` and `b_in [d_in]` (None when tied), and `W_dec [d_sae, d_out]`,
    each latent's decoder blocks summed."""

    hook_in: str
    hook_out: str
    kind: str
    d_in: int
    d_sae: int
    d_out: int
    encode: Callable[[Tensor], Tensor]
    W_enc: Tensor | None
    b_in: Tensor | None
    W_dec: Tensor


def feature_layers(name: str, dictionary: SparseCoder) -> dict[str, FeatureLayer]:
    """`{name: FeatureLayer}` for a per-layer dictionary; `{"{name}.layer{i}": ...}` per layer of
    a dictionary over several layers."""
    hooks_in, hooks_out = dictionary.cfg.layer_hooks()
    out: dict[str, FeatureLayer] = {}
    for index, layer in enumerate(dictionary.layers):
        encoder = None if dictionary.W_enc is None else dictionary.encoder(layer)
        key = name if len(hooks_in) == 1 else f"{name}.layer{index}"
        out[key] = FeatureLayer(
            hook_in=hooks_in[index],
            hook_out=hooks_out[index],
            kind=dictionary.cfg.kind,
            d_in=dictionary.d_in,
            d_sae=dictionary.d_sae,
            d_out=dictionary.d_out,
            encode=functools.partial(dictionary.encode_layer, layer=layer),
            W_enc=None if encoder is None else encoder.W_enc,
            b_in=None if encoder is None else encoder.b_in,
            W_dec=functools.reduce(torch.add, [block for _, block in dictionary.decoders(layer)]),
        )
    return out


def compute_dashboards(
    adapter: ModelAdapter,
    dictionaries: Mapping[str, SparseCoder],
    token_batches: Iterable[Tensor],
    config: DashboardConfig | None = None,
    *,
    max_tokens: int | None = None,
    progress: bool = False,
) -> dict[str, FeatureDashboards]:
    """Return `{name: FeatureDashboards}` for every dictionary, from one pass over `token_batches`
    (`input_ids [batch, pos]`, one model forward each, up to `max_tokens`). A cross-layer
    transcoder gives one entry per layer, `"{name}.layer{i}"` (see `feature_layers`)."""
    cfg = config or DashboardConfig()
    if not dictionaries:
        raise SparseCircuitsError("compute_dashboards got no dictionaries; pass at least one")
    layers = {
        key: layer
        for name, dictionary in dictionaries.items()
        for key, layer in feature_layers(name, dictionary).items()
    }
    hooks = sorted({f.hook_in for f in layers.values()}, key=lambda h: adapter.hook_point(h).order)
    for name, f in layers.items():
        if adapter.hook_dim(f.hook_in) != f.d_in:
            raise SparseCircuitsError(
                f"dictionary {name} reads {f.hook_in} with d_in={f.d_in}, but the model's "
                f"width there is {adapter.hook_dim(f.hook_in)}; use dictionaries trained on this model"
            )
    device = adapter.device
    accs = {name: _Accumulator(f.d_sae, cfg, device) for name, f in layers.items()}
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
            for name, f in layers.items():
                mlp_in = cache[f.hook_in]
                acts = f.encode(mlp_in.reshape(-1, mlp_in.shape[-1])).float()
                accs[name].update(acts.reshape(*input_ids.shape, -1), input_ids, valid, generator)
            n_seen += input_ids.numel()
            bar.update(input_ids.numel())
    bar.close()
    if n_seen == 0:
        raise SparseCircuitsError("the dataset gave no token batches; pass a non-empty dataset")
    results: dict[str, FeatureDashboards] = {}
    for name, f in layers.items():
        results[name] = _finish(name, f, accs[name], adapter, cfg)
        seen_ids.update(_referenced_ids(results[name]))
    strings = _token_strings(adapter.tokenizer, seen_ids)
    for dash in results.values():
        dash.token_strings = {i: strings[i] for i in _referenced_ids(dash)}
    return results


def _finish(
    name: str,
    dictionary: FeatureLayer,
    acc: _Accumulator,
    adapter: ModelAdapter,
    cfg: DashboardConfig,
) -> FeatureDashboards:
    edges = torch.logspace(cfg.hist_log10_min, cfg.hist_log10_max, cfg.hist_bins + 1)
    # Slots never filled (latent fired fewer times than the sample size) carry key -1: blank them.
    empty = acc.sample_keys < 0
    sample_acts = acc.sample_acts.masked_fill(empty, 0.0)
    sample_ids = acc.sample_ids.masked_fill(empty[..., None], -1)
    logits = output_logit_tables(adapter, dictionary, cfg.n_logits) or (None,) * 4
    deembed = deembedding_tables(adapter, dictionary, cfg.n_deembed) or (None, None)
    return FeatureDashboards(
        name=name,
        hook_in=dictionary.hook_in,
        hook_out=dictionary.hook_out,
        layer=hook_layer(dictionary.hook_in),
        kind=dictionary.kind,
        d_sae=dictionary.d_sae,
        n_tokens=acc.n_tokens,
        config=cfg,
        top_acts=acc.top_acts.cpu(),
        top_token_ids=acc.top_ids.cpu(),
        top_window_acts=acc.top_wacts.cpu(),
        sample_acts=sample_acts.cpu(),
        sample_token_ids=sample_ids.cpu(),
        sample_window_acts=acc.sample_wacts.masked_fill(empty[..., None], 0.0).cpu(),
        fire_counts=acc.fire_counts.cpu(),
        act_sums=acc.act_sums.cpu(),
        max_acts=acc.max_acts.cpu(),
        hist_counts=acc.hist.view(dictionary.d_sae, cfg.hist_bins).cpu(),
        hist_edges=edges,
        top_logit_ids=logits[0],
        top_logit_values=logits[1],
        bottom_logit_ids=logits[2],
        bottom_logit_values=logits[3],
        deembed_ids=deembed[0],
        deembed_values=deembed[1],
        model_name=getattr(adapter, "name", ""),
    )


def _chunk_size(vocab: int) -> int:
    return max(1, (1 << 24) // max(vocab, 1))  # ~64 MB of fp32 scores per chunk


@torch.no_grad()
def output_logit_tables(
    adapter: ModelAdapter, dictionary: FeatureLayer, n: int
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Top and bottom `n` direct logit effects of each latent's decoder row through the final norm
    (centring, gain) and `W_U`: `(top_ids, top_values, bottom_ids, bottom_values)`, each
    `[d_sae, n]`, or None when the dictionary does not write to the residual stream."""
    kind = adapter.hook_point(dictionary.hook_out).kind
    if kind not in RESIDUAL_WRITERS or dictionary.d_out != adapter.d_model:
        return None
    final = adapter.norm("ln_final")
    W_U = adapter.W_U.float()
    n = min(n, W_U.shape[1])
    outs: list[list[Tensor]] = [[], [], [], []]
    step = _chunk_size(W_U.shape[1])
    for start in range(0, dictionary.d_sae, step):
        rows = dictionary.W_dec[start : start + step].detach().float().to(W_U.device)
        if final.kind == "layernorm":
            rows = rows - rows.mean(-1, keepdim=True)
        scores = (rows * final.gain.float()) @ W_U
        top = scores.topk(n, dim=1)
        bottom = scores.topk(n, dim=1, largest=False)
        for out, t in zip(
            outs, (top.indices, top.values, bottom.indices, bottom.values), strict=True
        ):
            out.append(t.cpu())
    return tuple(torch.cat(o) for o in outs)  # type: ignore[return-value]


@torch.no_grad()
def deembedding_tables(
    adapter: ModelAdapter, dictionary: FeatureLayer, n: int
) -> tuple[Tensor, Tensor] | None:
    """The `n` tokens whose embedding most excites each latent: `W_E` through the input hook's
    norm (full norm for the MLP's input `mlp.hook_in`, up to the gain for `ln2.hook_normalized`
    as TransformerLens defines it, none for residual hooks), minus `b_in`, then `W_enc`. Returns
    `(ids, values)` `[d_sae, n]`, or None when the dictionary reads something other than the
    residual stream or an MLP input.
    """
    from sparsecircuits.models.architectures import apply_gain, normalize
    from sparsecircuits.models.hooks import pre_mlp_norm_stage

    if dictionary.W_enc is None or dictionary.b_in is None:
        return None
    point = adapter.hook_point(dictionary.hook_in)
    W_E = adapter.W_E.float()
    stage = pre_mlp_norm_stage(point.kind, adapter.norm_kind)
    if stage in ("normalized", "gained"):
        params = adapter.norm("ln2", point.layer)
        embed = normalize(W_E, params)
        embed = (apply_gain(embed, params) if stage == "gained" else embed).float()
    elif stage == "residual" or point.kind in ("hook_embed", "hook_resid_pre", "hook_resid_post"):
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
    tensors = [
        dash.top_token_ids,
        dash.sample_token_ids,
        dash.top_logit_ids,
        dash.bottom_logit_ids,
        dash.deembed_ids,
    ]
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
