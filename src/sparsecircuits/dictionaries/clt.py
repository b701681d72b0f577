"""`CrossLayerTranscoder` (Ameisen, Lindsey et al. 2025, "Circuit Tracing"): layer-ℓ latents write
every output t >= ℓ, with any activation family (docs/internals.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import Tensor, nn

from sparsecircuits.dictionaries import kernels
from sparsecircuits.dictionaries.activations import Activation, make_activation
from sparsecircuits.dictionaries.activations.base import ForwardOutput
from sparsecircuits.dictionaries.base import (
    CoderBase,
    EncoderWeights,
    centre,
    loss_parts,
    random_unit_vectors,
    shrink_untrained_output,
)
from sparsecircuits.dictionaries.config import DictionaryConfig, hook_layer
from sparsecircuits.dictionaries.squared_error import squared_sum
from sparsecircuits.errors import SparseCircuitsError


class CLTLayer:
    """Layer ℓ of a cross-layer transcoder as its activation sees it (differentiable views):
    `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `b_in [d_in]`, and `W_dec [d_sae, (L - ℓ) d_out]`, the
    layer's decoder blocks side by side."""

    def __init__(self, clt: CrossLayerTranscoder, layer: int) -> None:
        self.clt, self.layer, self.cfg = clt, layer, clt.cfg

    @property
    def W_enc(self) -> Tensor:
        """Layer encoder `[d_in, d_sae]`."""
        return self.clt.W_enc[self.layer]

    @property
    def b_enc(self) -> Tensor:
        """Layer encoder bias `[d_sae]`."""
        return self.clt.b_enc[self.layer]

    @property
    def b_in(self) -> Tensor:
        """Layer input bias `[d_in]`."""
        return self.clt.b_in[self.layer]

    @property
    def W_dec(self) -> Tensor:
        """Layer decoder blocks side by side, `[d_sae, (L - ℓ) · d_out]`."""
        return self.clt.W_dec[self.layer].flatten(1)

    @property
    def d_sae(self) -> int:
        """Latents in this layer."""
        return self.clt.d_sae

    def decoder_norms(self) -> Tensor:
        """Norm of each latent's concatenated decoder vectors, `[d_sae]`."""
        return self.W_dec.norm(dim=1)

    def decode_sparse(self, values: Tensor, indices: Tensor, bias: bool = False) -> Tensor:
        """`Σ_s values[:, s] W_dec[indices[:, s]]` -> `[n, (L - ℓ) d_out]` (a layer has no own bias)."""
        return kernels.sparse_decode(values, indices, self.W_dec)

    def decode(self, codes: ForwardOutput) -> Tensor:
        """What `codes` write, `[n, (L - ℓ) d_out]` (sparse kernels for sparse codes)."""
        if codes.is_sparse:
            assert codes.values is not None and codes.indices is not None
            return self.decode_sparse(codes.values, codes.indices)
        return codes.feature_acts @ self.W_dec


class CrossLayerTranscoder(CoderBase):
    """Cross-layer transcoder over `cfg.n_layers` layers (`kind="clt"`), any activation family."""

    def __init__(self, cfg: DictionaryConfig, init: bool = True) -> None:
        super().__init__()
        if cfg.kind != "clt":
            raise SparseCircuitsError(f"CrossLayerTranscoder needs kind='clt' (got {cfg.kind!r})")
        self.cfg = cfg
        L, d_in, d_sae, d_out = cfg.n_layers, cfg.d_in, cfg.d_sae, self.d_out
        factory: dict[str, Any] = {"dtype": cfg.torch_dtype, "device": cfg.device}
        self.W_enc = nn.Parameter(torch.empty(L, d_in, d_sae, **factory))
        self.b_enc = nn.Parameter(torch.zeros(L, d_sae, **factory))
        # `family` holds the same modules as `activations`, typed (ModuleList items are `Module`)
        self.family: list[Activation] = [make_activation(cfg) for _ in range(L)]
        self.activations = nn.ModuleList(self.family)
        if self.family[0].tied or not self.family[0].uses_input_bias:
            raise SparseCircuitsError(
                f"architecture {cfg.architecture!r} encodes with its decoder; a cross-layer transcoder needs an encoder"
            )
        self.b_in = nn.Parameter(torch.zeros(L, d_in, **factory))
        self.b_dec = nn.Parameter(torch.zeros(L, d_out, **factory))
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.empty(d_sae, L - source, d_out, **factory)) for source in range(L)]
        )
        self.register_state_dict_post_hook(_stack_family_state)
        self.register_load_state_dict_pre_hook(_unstack_family_state)
        if init:
            self.reset_parameters()

    @property
    def n_layers(self) -> int:
        """Number of layers L."""
        return self.cfg.n_layers

    def layer(self, index: int) -> CLTLayer:
        """The weights of the CLT's `index`-th layer (0..L-1) as its activation sees them."""
        if not 0 <= index < self.n_layers:
            raise SparseCircuitsError(
                f"layer index {index} is out of range for a cross-layer transcoder over {self.n_layers} layers"
            )
        return CLTLayer(self, index)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Seeded init: concatenated decoder vectors of norm `decoder_init_norm`, encoder columns
        likewise, biases zero, each layer's family state reset."""
        generator = torch.Generator().manual_seed(self.cfg.seed)
        norm = float(self.cfg.decoder_init_norm or 1.0)
        for W_dec in self.W_dec:
            W_dec.copy_(random_unit_vectors(tuple(W_dec.shape), (1, 2), generator) * norm)
        self.W_enc.copy_(random_unit_vectors(tuple(self.W_enc.shape), (1,), generator) * norm)
        for bias in (self.b_enc, self.b_in, self.b_dec):
            bias.zero_()
        fresh = make_activation(self.cfg).state_dict()
        for activation in self.family:
            activation.load_state_dict(fresh)

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
        """`b_in[ℓ]` / `b_dec[ℓ]` = centre (mean or geometric median) of each layer's inputs /
        targets; then the untrained output is shrunk as a transcoder's is, and each layer's
        family initialises from its centred inputs."""
        x_sample, target_sample = self._check(x_sample, _required(target_sample))
        for layer in range(self.n_layers):
            self.b_in[layer].copy_(centre(x_sample[:, layer], geometric_median))
            self.b_dec[layer].copy_(centre(target_sample[:, layer], geometric_median))
        shrink_untrained_output(self, x_sample, target_sample)
        for layer, activation in enumerate(self.family):
            activation.init_from_data(self.layer(layer), x_sample[:, layer] - self.b_in[layer])

    def decoder_norms(self) -> Tensor:
        """Norm of each latent's concatenated decoder vectors, `[L, d_sae]` (differentiable)."""
        return torch.stack([W_dec.flatten(1).norm(dim=1) for W_dec in self.W_dec])

    def _codes(self, x: Tensor, dead_mask: Tensor | None) -> list[ForwardOutput]:
        """Each layer's codes of `x [n, L, d_in]` (`dead_mask [L, d_sae]` selects AuxK codes)."""
        return [
            activation.encode_input(
                self.layer(layer), x[:, layer], None if dead_mask is None else dead_mask[layer]
            )
            for layer, activation in enumerate(self.family)
        ]

    def _decode_codes(self, codes: list[ForwardOutput], n: int) -> Tensor:
        """`ŷ [n, L, d_out]` from each layer's codes of `n` tokens (causal sum over source
        layers + b_dec)."""
        out = self.b_dec.expand(n, -1, -1).clone()
        for source, layer_codes in enumerate(codes):
            written = self.layer(source).decode(layer_codes)
            out[:, source:] = out[:, source:] + written.view(n, self.n_layers - source, self.d_out)
        return out

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations `[n, L, d_sae]` of `x [n, L, d_in]`."""
        return torch.stack([c.feature_acts for c in self._codes(self._check(x)[0], None)], dim=1)

    def encode_layer(self, x: Tensor, layer: int) -> Tensor:
        """Feature activations `[..., d_sae]` of model layer `layer`'s latents from its input
        `x [..., d_in]`: `encode`'s per-layer computation, for callers running layers one by one."""
        index = self._index(layer)
        if x.shape[-1] != self.d_in:
            raise SparseCircuitsError(
                f"layer {layer} of this cross-layer transcoder expects inputs of width {self.d_in}, got {x.shape[-1]}"
            )
        flat = x.reshape(-1, self.d_in).to(self.W_enc.device, self.W_enc.dtype)
        codes = self.family[index].encode_input(self.layer(index), flat, None)
        return codes.feature_acts.reshape(*x.shape[:-1], self.d_sae)

    def layer_writes(self, x: Tensor, layer: int) -> Tensor:
        """What model layer `layer`'s input `x [n, d_in]` writes to its own output and every later
        one the CLT covers: `[n, L - index, d_out]`, with that layer's `b_dec` added to its own."""
        index = self._index(layer)
        codes = self.family[index].encode_input(self.layer(index), x.to(self.W_enc.dtype), None)
        written = self.layer(index).decode(codes).view(x.shape[0], -1, self.d_out)
        written[:, 0] += self.b_dec[index]
        return written

    def decode(self, feature_acts: Tensor) -> Tensor:
        """`ŷ [n, L, d_out]` from `feature_acts [n, L, d_sae]` (causal sum over source layers + b_dec)."""
        codes = [
            ForwardOutput(dense_acts=feature_acts[:, layer], d_sae=self.d_sae)
            for layer in range(self.n_layers)
        ]
        return self._decode_codes(codes, feature_acts.shape[0])

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        """`ForwardOutput` with `out [n, L, d_out]` and `dense_acts [n, L, d_sae]`."""
        x = self._check(x)[0]
        return self._output(self._codes(x, dead_mask), x.shape[0])

    def _output(self, codes: list[ForwardOutput], n: int) -> ForwardOutput:
        pre_acts = [c.pre_acts for c in codes]
        return ForwardOutput(
            out=self._decode_codes(codes, n),
            pre_acts=None if any(p is None for p in pre_acts) else torch.stack(pre_acts, dim=1),  # type: ignore[arg-type]
            dense_acts=torch.stack([c.feature_acts for c in codes], dim=1),
            d_sae=self.d_sae,
        )

    @property
    def layers(self) -> list[int]:
        """The model layers this CLT covers, one per CLT layer: `L` of each output hook
        `blocks.L.…` (the CLT layer's index where a hook names no layer)."""
        hooks_out = self.cfg.layer_hooks()[1]
        found = [hook_layer(hook) for hook in hooks_out]
        return [i if layer is None else layer for i, layer in enumerate(found)]

    def _index(self, layer: int) -> int:
        """The CLT layer index of model layer `layer`."""
        layers = self.layers
        if layer not in layers:
            raise SparseCircuitsError(
                f"layer {layer} is not covered by this cross-layer transcoder (layers {layers})"
            )
        return layers.index(layer)

    def hook_in(self, layer: int) -> str:
        """The hook model layer `layer`'s latents read."""
        return self.cfg.layer_hooks()[0][self._index(layer)]

    def hook_out(self, layer: int) -> str:
        """The hook whose value model layer `layer`'s output replaces."""
        return self.cfg.layer_hooks()[1][self._index(layer)]

    def encoder(self, layer: int) -> EncoderWeights:
        """Model layer `layer`'s encoder (views of `W_enc`, `b_enc`, `b_in`)."""
        index = self._index(layer)
        return EncoderWeights(self.W_enc[index], self.b_enc[index], self.b_in[index])

    def decoders(self, layer: int) -> list[tuple[int, Tensor]]:
        """`[(target model layer, W_dec block [d_sae, d_out])]` for `layer` and every later layer
        the CLT covers."""
        index = self._index(layer)
        W_dec = self.W_dec[index]
        targets = self.layers[index:]
        return [(target, W_dec[:, offset]) for offset, target in enumerate(targets)]

    def skip(self, layer: int) -> Tensor | None:
        """A CLT has no skip connection: None."""
        self._index(layer)
        return None

    def output_bias(self, layer: int) -> Tensor:
        """The `b_dec` row `[d_out]` added to model layer `layer`'s output."""
        return self.b_dec[self._index(layer)]

    def loss(
        self, x: Tensor, target: Tensor | None, dead_mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """As `Dictionary.loss` with a layer axis: `fvu` averages the per-layer FVUs, `mse` sums
        the per-layer MSEs, `l0`/`l1` and the penalties sum over layers, `fired_counts` is
        `[L, d_sae]`, `dead_mask` is `[L, d_sae]`. `target [n, L, d_out]` is required (None only
        type-matches `Dictionary.loss`, whose SAEs default it to x)."""
        x, target = self._check(x, _required(target))
        if dead_mask is not None and dead_mask.shape != (self.n_layers, self.d_sae):
            raise SparseCircuitsError(
                f"dead_mask must be a bool tensor of shape [{self.n_layers}, {self.d_sae}]"
            )
        codes = self._codes(x, dead_mask)
        fo = self._output(codes, x.shape[0])
        assert fo.out is not None
        error = fo.out - target
        squared_error = squared_sum(error, dim=(0, 2))  # [L]
        tiny = torch.finfo(target.dtype).tiny
        total_variance = (target - target.mean(dim=0)).pow_(2).sum(dim=(0, 2)).clamp_min(tiny)
        fvu = (squared_error / total_variance).mean()
        mse = squared_error.sum() / x.shape[0]
        recon = fvu if self.cfg.recon_loss == "fvu" else mse
        detached_error = error.detach()
        sparsity = fo.out.new_zeros(())
        aux = fo.out.new_zeros(())
        for layer, (activation, layer_codes) in enumerate(zip(self.family, codes, strict=True)):
            view = self.layer(layer)
            dead = None if dead_mask is None else dead_mask[layer]
            sparsity = sparsity + activation.sparsity_loss(view, layer_codes, dead)
            aux = aux + activation.aux_loss(
                view,
                layer_codes,
                detached_error[:, layer:].flatten(1),
                total_variance[layer:].sum(),
                dead,
            )
            if self.training:
                activation.observe(view, layer_codes)
        loss = recon + sparsity + self.cfg.aux_k_coefficient * aux
        with torch.no_grad():
            return loss, loss_parts(
                dead_mask,
                loss=loss,
                mse=mse,
                fvu=fvu,
                l0=torch.stack([c.l0() for c in codes]).sum(),
                l1=torch.stack(
                    [c.weighted_l1(self.layer(i).decoder_norms()) for i, c in enumerate(codes)]
                ).sum(),
                sparsity=sparsity,
                aux=aux,
                fired_counts=torch.stack([c.fired_counts() for c in codes]),
            )

    def decoder_weights(self) -> list[Tensor]:
        """`W_dec[ℓ] [d_sae, L - ℓ, d_out]` for every layer ℓ."""
        return list(self.W_dec)

    def family_views(self) -> list[tuple[Activation, Any]]:
        """`(activation ℓ, layer(ℓ))` for every layer ℓ."""
        return [(activation, self.layer(i)) for i, activation in enumerate(self.family)]

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


def _required(target: Tensor | None) -> Tensor:
    if target is None:
        raise SparseCircuitsError(
            "a cross-layer transcoder fits its output hooks: pass target [tokens, n_layers, d_out]"
        )
    return target


def _family_keys(clt: nn.Module) -> list[str]:
    """Names of the per-layer family tensors (`activations.0.<name>` -> `<name>`)."""
    first = cast(nn.ModuleList, clt.activations)[0]
    return list(first.state_dict())


def _stack_family_state(
    module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """State-dict hook: `activations.ℓ.<name> [...]` -> one `<name> [L, ...]` (the saved layout)."""
    n_layers = len(cast(nn.ModuleList, module.activations))
    for name in _family_keys(module):
        per_layer = [state.pop(f"{prefix}activations.{layer}.{name}") for layer in range(n_layers)]
        state[prefix + name] = torch.stack(per_layer)


def _unstack_family_state(
    module: nn.Module, state: dict[str, Any], prefix: str, *args: Any
) -> None:
    """Load-state-dict pre-hook: the inverse of `_stack_family_state`."""
    for name in _family_keys(module):
        stacked = state.pop(prefix + name, None)
        if stacked is None:
            continue
        for layer, tensor in enumerate(stacked.unbind(0)):
            state[f"{prefix}activations.{layer}.{name}"] = tensor
