"""`CrossLayerTranscoder` (Ameisen, Lindsey et al. 2025, "Circuit Tracing").

Layer-ℓ latents read that layer's MLP input and write to the MLP outputs of layer ℓ and every
later layer:

    a_ℓ = σ((x_ℓ - b_in,ℓ) W_enc,ℓ + b_enc,ℓ)
    ŷ_t = Σ_{ℓ <= t} a_ℓ W_dec,ℓ[:, t - ℓ] + b_dec,t

Shapes: `W_enc [L, d_in, d_sae]`, `b_enc [L, d_sae]`, `b_in [L, d_in]`, `b_dec [L, d_out]`, and
one decoder per source layer, `W_dec[ℓ] [d_sae, L - ℓ, d_out]` (only the causal blocks are
stored). σ is ReLU, JumpReLU (`log_threshold [L, d_sae]`) or TopK per layer
(`cfg.architecture`). The sparsity penalty uses the norm of each latent's *concatenated*
decoder vectors `||W_dec[ℓ][i]||` (over all layers it writes to): tanh by default
(`l0_coefficient · mean_tokens Σ_{ℓ,i} tanh(tanh_scale · ||W_dec[ℓ][i]|| a_ℓi)`), step-L0 when
`jumprelu_sparsity="step"`, decoder-norm-weighted L1 for ReLU (`l1_coefficient`).
Under `decoder_norm="unit"` (TopK) the concatenated vectors are kept at unit norm.

It follows the `Dictionary` interface with a layer axis: `x [n, L, d_in]`, `target
[n, L, d_out]`, `dead_mask [L, d_sae]`, `feature_acts [n, L, d_sae]`. `inputs_from(batch)` stacks
the per-layer hook activations (`cfg.layer_hooks()`), so a trainer can treat it like any
dictionary. With `n_layers == 1` it computes exactly a per-layer transcoder. SAELens has no CLT
format: saved as the extension "clt_<architecture>" (full state in `sae_weights.safetensors`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from sparsecircuits.dictionaries.activations.base import ForwardOutput
from sparsecircuits.dictionaries.activations.jumprelu import jumprelu, step, tanh_penalty
from sparsecircuits.dictionaries.base import _geometric_median, _mean
from sparsecircuits.dictionaries.config import DictionaryConfig
from sparsecircuits.errors import SparseCircuitsError


class CrossLayerTranscoder(nn.Module):
    """Cross-layer transcoder over `cfg.n_layers` layers (`kind="clt"`)."""

    log_threshold: nn.Parameter | None

    def __init__(self, cfg: DictionaryConfig, init: bool = True) -> None:
        super().__init__()
        if cfg.kind != "clt":
            raise SparseCircuitsError(f"CrossLayerTranscoder needs kind='clt' (got {cfg.kind!r})")
        self.cfg = cfg
        L, d_in, d_sae, d_out = cfg.n_layers, cfg.d_in, cfg.d_sae, self.d_out
        factory: dict[str, Any] = {"dtype": cfg.torch_dtype, "device": cfg.device}
        self.W_enc = nn.Parameter(torch.empty(L, d_in, d_sae, **factory))
        self.b_enc = nn.Parameter(torch.zeros(L, d_sae, **factory))
        self.b_in = nn.Parameter(torch.zeros(L, d_in, **factory))
        self.b_dec = nn.Parameter(torch.zeros(L, d_out, **factory))
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.empty(d_sae, L - source, d_out, **factory)) for source in range(L)]
        )
        if cfg.architecture == "jumprelu":
            init_log = math.log(cfg.jumprelu_init_threshold)
            self.log_threshold = nn.Parameter(torch.full((L, d_sae), init_log, **factory))
        else:
            self.log_threshold = None
        if init:
            self.reset_parameters()

    @property
    def d_in(self) -> int:
        """Input width per layer."""
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        """Latents per layer."""
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        """Output width per layer."""
        return self.cfg.d_out

    @property
    def n_layers(self) -> int:
        """Number of layers L."""
        return self.cfg.n_layers

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Seeded init: concatenated decoder vectors of norm `decoder_init_norm`, encoder columns likewise."""
        generator = torch.Generator().manual_seed(self.cfg.seed)
        norm = float(self.cfg.decoder_init_norm or 1.0)
        for W_dec in self.W_dec:
            fresh = torch.randn(W_dec.shape, generator=generator)
            W_dec.copy_(fresh / fresh.flatten(1).norm(dim=1)[:, None, None] * norm)
        fresh = torch.randn(self.W_enc.shape, generator=generator)
        self.W_enc.copy_(fresh / fresh.norm(dim=1, keepdim=True) * norm)
        for bias in (self.b_enc, self.b_in, self.b_dec):
            bias.zero_()
        if self.log_threshold is not None:
            self.log_threshold.fill_(math.log(self.cfg.jumprelu_init_threshold))

    # ----------------------------------------------------------------- data plumbing
    def hook_names(self) -> list[str]:
        """Every hook the CLT reads (inputs then outputs, per layer)."""
        hooks_in, hooks_out = self.cfg.layer_hooks()
        return hooks_in + hooks_out

    def inputs_from(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Stack `{hook: [n, d]}` activations into `(x [n, L, d_in], target [n, L, d_out])`."""
        hooks_in, hooks_out = self.cfg.layer_hooks()
        missing = [hook for hook in hooks_in + hooks_out if hook not in batch]
        if missing:
            raise SparseCircuitsError(
                f"the batch lacks hook(s) {', '.join(missing)} needed by this cross-layer transcoder"
            )
        return torch.stack([batch[h] for h in hooks_in], dim=1), torch.stack(
            [batch[h] for h in hooks_out], dim=1
        )

    @torch.no_grad()
    def init_biases_from_data(
        self, x_sample: Tensor, target_sample: Tensor | None, geometric_median: bool = False
    ) -> None:
        """`b_in[ℓ]` / `b_dec[ℓ]` = centre (mean or geometric median) of each layer's inputs / targets."""
        x_sample, target_sample = self._check(x_sample, _required(target_sample))
        centre = _geometric_median if geometric_median else _mean
        for layer in range(self.n_layers):
            self.b_in[layer].copy_(centre(x_sample[:, layer]))
            self.b_dec[layer].copy_(centre(target_sample[:, layer]))

    # ----------------------------------------------------------------- forward pass
    def decoder_norms(self) -> Tensor:
        """Norm of each latent's concatenated decoder vectors, `[L, d_sae]` (differentiable)."""
        return torch.stack([W_dec.flatten(1).norm(dim=1) for W_dec in self.W_dec])

    def pre_acts(self, x: Tensor) -> Tensor:
        """`(x_ℓ - b_in,ℓ) W_enc,ℓ + b_enc,ℓ` for `x [n, L, d_in]` -> `[n, L, d_sae]`."""
        return torch.einsum("nld,lds->nls", x - self.b_in, self.W_enc) + self.b_enc

    def activate(self, pre_acts: Tensor, layer: int | None = None) -> Tensor:
        """The per-layer activation on `pre_acts [n, L, d_sae]`, or on one layer's `[..., d_sae]`
        when `layer` is given; returns the same shape."""
        cfg = self.cfg
        if cfg.architecture == "jumprelu":
            assert self.log_threshold is not None
            log_threshold = self.log_threshold if layer is None else self.log_threshold[layer]
            return jumprelu(pre_acts, log_threshold.exp(), cfg.jumprelu_bandwidth)
        if cfg.architecture == "topk":
            values, indices = pre_acts.topk(cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre_acts).scatter(-1, indices, values.relu())
        return pre_acts.relu()

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations `[n, L, d_sae]` of `x [n, L, d_in]`."""
        return self.activate(self.pre_acts(self._check(x)[0]))

    def encode_layer(self, x: Tensor, layer: int) -> Tensor:
        """Feature activations `[..., d_sae]` of layer `layer`'s latents from its input `x [..., d_in]`.

        The same per-layer computation as `encode` (which needs every layer's input at once), for
        callers that run the layers one after another.
        """
        if not 0 <= layer < self.n_layers:
            raise SparseCircuitsError(
                f"layer {layer} is out of range for a cross-layer transcoder over {self.n_layers} layers"
            )
        if x.shape[-1] != self.d_in:
            raise SparseCircuitsError(
                f"layer {layer} of this cross-layer transcoder expects inputs of width {self.d_in}, got {x.shape[-1]}"
            )
        x = x.to(self.W_enc.dtype)
        pre_acts = (x - self.b_in[layer]) @ self.W_enc[layer] + self.b_enc[layer]
        return self.activate(pre_acts, layer)

    def layer_view(self, layer: int) -> CLTLayerView:
        """Return layer `layer`'s latents seen as one per-layer dictionary (see `CLTLayerView`)."""
        if not 0 <= layer < self.n_layers:
            raise SparseCircuitsError(
                f"layer {layer} is out of range for a cross-layer transcoder over {self.n_layers} layers"
            )
        return CLTLayerView(self, layer)

    def decode(self, feature_acts: Tensor) -> Tensor:
        """`ŷ [n, L, d_out]` from `feature_acts [n, L, d_sae]` (causal sum over source layers + b_dec)."""
        n = feature_acts.shape[0]
        out = self.b_dec.expand(n, -1, -1).clone()
        for source, W_dec in enumerate(self.W_dec):
            written = feature_acts[:, source] @ W_dec.flatten(1)
            out[:, source:] = out[:, source:] + written.view(n, self.n_layers - source, self.d_out)
        return out

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        """`ForwardOutput` with `out [n, L, d_out]`, `dense_acts`/`pre_acts [n, L, d_sae]`."""
        x = self._check(x)[0]
        pre_acts = self.pre_acts(x)
        acts = self.activate(pre_acts)
        return ForwardOutput(
            out=self.decode(acts), pre_acts=pre_acts, dense_acts=acts, d_sae=self.d_sae
        )

    # ----------------------------------------------------------------- loss
    def loss(
        self, x: Tensor, target: Tensor | None, dead_mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """As `Dictionary.loss` with a layer axis: `mse` sums the per-layer MSEs, `fvu` averages the
        per-layer FVUs, `l0` counts active latents per token over all layers, `fired_counts` is
        `[L, d_sae]`, `dead_mask` is `[L, d_sae]`. `target [n, L, d_out]` is required (None only
        type-matches `Dictionary.loss`, whose SAEs default it to x)."""
        x, target = self._check(x, _required(target))
        if dead_mask is not None and dead_mask.shape != (self.n_layers, self.d_sae):
            raise SparseCircuitsError(
                f"dead_mask must be a bool tensor of shape [{self.n_layers}, {self.d_sae}]"
            )
        fo = self.forward(x)
        assert fo.out is not None and fo.pre_acts is not None
        acts = fo.feature_acts
        squared_error = (fo.out - target).pow(2).sum(dim=(0, 2))  # [L]
        tiny = torch.finfo(target.dtype).tiny
        total_variance = (target - target.mean(dim=0)).pow(2).sum(dim=(0, 2)).clamp_min(tiny)
        fvu = (squared_error / total_variance).mean()
        mse = squared_error.sum() / x.shape[0]
        recon = fvu if self.cfg.recon_loss == "fvu" else mse
        norms = self.decoder_norms()
        sparsity = self._sparsity(fo.pre_acts, acts, norms, dead_mask)
        loss = recon + sparsity
        with torch.no_grad():
            parts = {
                "loss": loss.detach(),
                "mse": mse.detach(),
                "fvu": fvu.detach(),
                "l0": (acts != 0).sum(dim=(1, 2)).float().mean(),
                "l1": (acts.abs() * norms).sum(dim=(1, 2)).mean().detach(),
                "sparsity": sparsity.detach(),
                "aux": torch.zeros(()),
                "n_dead": torch.tensor(0 if dead_mask is None else int(dead_mask.sum())),
                "fired_counts": (acts != 0).sum(dim=0),
            }
        return loss, parts

    def _sparsity(
        self, pre_acts: Tensor, acts: Tensor, norms: Tensor, dead_mask: Tensor | None
    ) -> Tensor:
        cfg = self.cfg
        if cfg.architecture == "topk":
            return acts.new_zeros(())
        if cfg.architecture == "relu":
            return cfg.l1_coefficient * (acts.abs() * norms).sum(dim=(1, 2)).mean()
        assert self.log_threshold is not None
        threshold = self.log_threshold.exp()
        if cfg.jumprelu_sparsity == "tanh":
            penalty = tanh_penalty(acts, norms, cfg.tanh_scale)
        else:
            penalty = step(pre_acts, threshold, cfg.jumprelu_bandwidth).sum(dim=(1, 2)).mean()
        loss = cfg.l0_coefficient * penalty
        if cfg.pre_act_loss_coefficient > 0 and dead_mask is not None and bool(dead_mask.any()):
            shortfall = (threshold - pre_acts).relu() * dead_mask * norms
            loss = loss + cfg.pre_act_loss_coefficient * shortfall.sum(dim=(1, 2)).mean()
        return loss

    # ----------------------------------------------------------------- training hooks
    def before_optimizer_step(self) -> None:
        """Under "unit" decoder norm, remove the gradient parallel to each concatenated decoder vector."""
        if self.cfg.decoder_norm == "unit":
            self.remove_parallel_grads()

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Under "unit" decoder norm, renormalise the concatenated decoder vectors."""
        if self.cfg.decoder_norm == "unit":
            self.normalize_decoder()

    @torch.no_grad()
    def remove_parallel_grads(self) -> None:
        """Project out of each `W_dec[ℓ].grad` row the component parallel to that (concatenated) row."""
        for W_dec in self.W_dec:
            if W_dec.grad is None:
                continue
            flat, grad = W_dec.flatten(1), W_dec.grad.flatten(1)
            unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(torch.finfo(flat.dtype).eps)
            grad.sub_((grad * unit).sum(dim=1, keepdim=True) * unit)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each latent's concatenated decoder vector to unit norm."""
        for W_dec in self.W_dec:
            W_dec.div_(
                W_dec.flatten(1).norm(dim=1).clamp_min(torch.finfo(W_dec.dtype).eps)[:, None, None]
            )

    def _check(self, x: Tensor, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
        expected = (self.n_layers, self.d_in)
        if x.ndim != 3 or tuple(x.shape[1:]) != expected:
            raise SparseCircuitsError(
                f"a cross-layer transcoder expects x of shape [tokens, {self.n_layers}, {self.d_in}], got {tuple(x.shape)}"
            )
        x = x.to(self.W_enc.dtype)
        if target is None:
            return x, x
        if tuple(target.shape) != (x.shape[0], self.n_layers, self.d_out):
            raise SparseCircuitsError(
                f"target has shape {tuple(target.shape)}, expected {(x.shape[0], self.n_layers, self.d_out)}"
            )
        return x, target.to(self.W_enc.dtype)

    def extra_repr(self) -> str:
        cfg = self.cfg
        return f"architecture={cfg.architecture}, n_layers={cfg.n_layers}, d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={self.d_out}"


def _required(target: Tensor | None) -> Tensor:
    if target is None:
        raise SparseCircuitsError(
            "a cross-layer transcoder fits its output hooks: pass target [tokens, n_layers, d_out]"
        )
    return target


class CLTLayerView:
    """The latents of one layer of a `CrossLayerTranscoder`, shaped like a per-layer dictionary for
    per-latent tools (dashboards).

    `cfg` is the CLT's config with that layer's hooks filled in (`kind` stays "clt");
    `encode(x [..., d_in]) -> [..., d_sae]`; `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `b_in [d_in]`
    are the layer's own. `W_dec [d_sae, d_out]` is each latent's total write into the residual
    stream: the sum of its decoder blocks over every MLP output it writes to, which is what its
    direct effect on the logits reads.
    """

    def __init__(self, clt: CrossLayerTranscoder, layer: int) -> None:
        hooks_in, hooks_out = clt.cfg.layer_hooks()
        self.clt = clt
        self.layer = layer
        self.cfg = replace(clt.cfg, hook_in=hooks_in[layer], hook_out=hooks_out[layer])

    @property
    def d_in(self) -> int:
        """Input width."""
        return self.clt.d_in

    @property
    def d_sae(self) -> int:
        """Latents in this layer."""
        return self.clt.d_sae

    @property
    def d_out(self) -> int:
        """Output width (of each MLP output written)."""
        return self.clt.d_out

    @property
    def W_enc(self) -> Tensor:
        """This layer's encoder `[d_in, d_sae]`."""
        return self.clt.W_enc[self.layer]

    @property
    def b_enc(self) -> Tensor:
        """This layer's encoder bias `[d_sae]`."""
        return self.clt.b_enc[self.layer]

    @property
    def b_in(self) -> Tensor:
        """This layer's input bias `[d_in]`."""
        return self.clt.b_in[self.layer]

    @property
    def W_dec(self) -> Tensor:
        """Each latent's decoder blocks summed over the layers it writes to, `[d_sae, d_out]`."""
        return self.clt.W_dec[self.layer].sum(dim=1)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations `[..., d_sae]` of this layer's input `x [..., d_in]`."""
        return self.clt.encode_layer(x, self.layer)
