"""`Dictionary`: the weights, decoding, reconstruction loss and training hooks shared by every family
(parameters, initialisation and the trainer contract in docs/internals.md)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sparsecircuits.dictionaries import cpu_topk, kernels
from sparsecircuits.dictionaries.activations import Activation, make_activation
from sparsecircuits.dictionaries.activations.base import ForwardOutput
from sparsecircuits.dictionaries.config import DictionaryConfig, hook_layer
from sparsecircuits.dictionaries.sparse_step import RowSparseOutput
from sparsecircuits.dictionaries.squared_error import squared_sum
from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.clt import CrossLayerTranscoder

__all__ = ["CoderBase", "Dictionary", "EncoderWeights", "ForwardOutput", "geometric_median"]


@dataclass(frozen=True)
class EncoderWeights:
    """One layer's encoder: `pre_acts = (x - b_in) @ W_enc + b_enc`.

    `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `b_in [d_in]` (the tensors themselves, not copies).
    """

    W_enc: Tensor
    b_enc: Tensor
    b_in: Tensor


class CoderBase(nn.Module, ABC):
    """What `Dictionary` and `CrossLayerTranscoder` share: the widths, the decoder-norm policy
    and its training hooks (a CLT latent's decoder row is its concatenated decoder vectors)."""

    cfg: DictionaryConfig

    @property
    def d_in(self) -> int:
        """Input width (per layer)."""
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        """Number of latents (per layer)."""
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        """Output width (per layer; `d_in` for an SAE)."""
        return self.cfg.d_out

    @abstractmethod
    def decoder_weights(self) -> list[Tensor]:
        """The decoder matrices whose rows (everything after the first axis) are latents."""

    @abstractmethod
    def family_views(self) -> list[tuple[Activation, Any]]:
        """`(activation, the owner it sees)` per layer."""

    def before_optimizer_step(self) -> None:
        """Call after `backward()`, before `optimizer.step()`: under "unit" decoder norm, remove parallel grads."""
        if self.cfg.decoder_norm == "unit":
            for weight in self.decoder_weights():
                remove_parallel_grad(weight)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Call after `optimizer.step()`: renormalise the decoder ("unit") and run family hooks."""
        if self.cfg.decoder_norm == "unit":
            self.normalize_decoder()
        for activation, owner in self.family_views():
            activation.after_step(owner)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit L2 norm."""
        for weight in self.decoder_weights():
            normalize_rows(weight)

    def extra_repr(self) -> str:
        cfg = self.cfg
        return f"architecture={cfg.architecture}, kind={cfg.kind}, n_layers={cfg.n_layers}, d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={self.d_out}"


def loss_parts(dead_mask: Tensor | None, **parts: Tensor) -> dict[str, Tensor]:
    """`parts` detached, with `n_dead` (0-dim) from `dead_mask`: the `parts` of a `loss`."""
    n_dead = torch.tensor(0 if dead_mask is None else int(dead_mask.sum()))
    out = {name: value.detach() for name, value in parts.items()}
    fired_counts = out.pop("fired_counts")
    return out | {"n_dead": n_dead, "fired_counts": fired_counts}


class Dictionary(CoderBase):
    """A sparse dictionary `d_in -> d_sae -> d_out` (SAE when `kind == "sae"`, else a transcoder)."""

    W_skip: nn.Parameter | None

    def __init__(self, cfg: DictionaryConfig, init: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, self.d_out
        factory: dict[str, Any] = {"dtype": cfg.torch_dtype, "device": cfg.device}
        self.activation = make_activation(cfg)
        if self.activation.tied:  # the encoder reads W_dec (matching pursuit)
            self.register_parameter("W_enc", None)
            self.register_parameter("b_enc", None)
        else:
            self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, **factory))
            self.b_enc = nn.Parameter(torch.zeros(d_sae, **factory))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_out, **factory))
        self.b_dec = nn.Parameter(torch.zeros(d_out, **factory))
        self.b_in = nn.Parameter(
            torch.zeros(d_in, **factory), requires_grad=self.activation.uses_input_bias
        )
        if cfg.kind == "skip_transcoder":
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, **factory))
        else:
            self.W_skip = None
        if init:  # loaders pass init=False and fill every tensor themselves
            self.reset_parameters()

    def decoder_weights(self) -> list[Tensor]:
        """`[W_dec]`."""
        return [self.W_dec]

    def family_views(self) -> list[tuple[Activation, Any]]:
        """`[(activation, self)]`."""
        return [(self.activation, self)]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw the weights from `cfg.seed` (docs/internals.md) and zero the biases."""
        cfg = self.cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        norm = float(cfg.decoder_init_norm or 1.0)
        W_dec = random_unit_vectors((self.d_sae, self.d_out), (1,), generator) * norm
        if cfg.kind == "sae":
            W_enc = W_dec.T.clone()
        else:
            W_enc = random_unit_vectors((self.d_in, self.d_sae), (0,), generator) * norm
        self.W_dec.copy_(W_dec)
        if self.W_enc is not None:
            self.W_enc.copy_(W_enc)
            self.b_enc.zero_()
        self.b_dec.zero_()
        self.b_in.zero_()
        if self.W_skip is not None:
            self.W_skip.zero_()

    @torch.no_grad()
    def init_biases_from_data(
        self, x_sample: Tensor, target_sample: Tensor | None = None, geometric_median: bool = False
    ) -> None:
        """Set `b_in` and `b_dec` to the centres (mean, or Weiszfeld geometric median) of `x_sample
        [n, d_in]` and of `target_sample [n, d_out]` (x for an SAE); families centring by `b_dec`
        (matching pursuit) keep `b_in` at zero."""
        x_sample = self._check_input(x_sample).to(self.b_in.dtype)
        target_sample = self._check_target(x_sample, target_sample).to(self.b_dec.dtype)
        if self.activation.uses_input_bias:
            self.b_in.copy_(centre(x_sample, geometric_median))
        self.b_dec.copy_(centre(target_sample, geometric_median))
        if self.cfg.kind != "sae" and self.W_enc is not None:
            shrink_untrained_output(self, x_sample, target_sample)
        self.activation.init_from_data(self, x_sample - self.b_in)

    def hook_names(self) -> list[str]:
        """The hooks this dictionary reads: `[hook_in]` for an SAE, `[hook_in, hook_out]` otherwise."""
        return (
            [self.cfg.hook_in] if self.cfg.kind == "sae" else [self.cfg.hook_in, self.cfg.hook_out]
        )

    def inputs_from(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """`(x, target)` for `loss` from a `{hook: [n, d]}` batch (target None for an SAE)."""
        missing = [hook for hook in self.hook_names() if hook not in batch]
        if missing:
            raise SparseCircuitsError(
                f"the batch lacks hook(s) {', '.join(missing)} needed by this dictionary"
            )
        x = batch[self.cfg.hook_in]
        return (x, None) if self.cfg.kind == "sae" else (x, batch[self.hook_names()[1]])

    def encode(self, x: Tensor) -> Tensor:
        """Dense feature activations `[..., d_sae]` of `x [..., d_in]` (differentiable)."""
        leading = x.shape[:-1]
        codes = self.activation.encode_input(
            self, self._check_input(x.reshape(-1, x.shape[-1])), None
        )
        return codes.feature_acts.reshape(*leading, self.d_sae)

    def decode(self, feature_acts: Tensor) -> Tensor:
        """`feature_acts [..., d_sae] @ W_dec + b_dec` -> `[..., d_out]` (the skip term needs x: see `forward`)."""
        return feature_acts @ self.W_dec + self.b_dec

    def decode_sparse(self, values: Tensor, indices: Tensor, bias: bool = True) -> Tensor:
        """`Σ_s values[:, s] W_dec[indices[:, s]] (+ b_dec)` for `values, indices [n, k]` -> `[n, d_out]`."""
        out = kernels.sparse_decode(values, indices, self.W_dec)
        return out + self.b_dec if bias else out

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        """Encode and decode `x [n, d_in]`: `ForwardOutput` with `out [n, d_out]` and the codes;
        `dead_mask` (bool `[d_sae]`, True = dead) selects the auxiliary codes of TopK's AuxK."""
        x = self._check_input(x)
        if x.ndim != 2:
            raise SparseCircuitsError(
                f"forward expects [tokens, d_in] activations, got shape {tuple(x.shape)}"
            )
        if dead_mask is not None and dead_mask.shape != (self.d_sae,):
            raise SparseCircuitsError(f"dead_mask must be a bool tensor of shape [{self.d_sae}]")
        codes = self.activation.encode_input(self, x, dead_mask)
        if isinstance(codes, RowSparseOutput):  # a ReLU / JumpReLU step run row-sparsely
            out = codes.decode(self.W_dec) + self.b_dec
        elif codes.is_sparse:
            assert codes.values is not None and codes.indices is not None
            out = self.decode_sparse(codes.values, codes.indices)
        else:
            out = self.decode(codes.feature_acts)
        if self.W_skip is not None:
            out = out + x @ self.W_skip.T
        codes.out = out
        return codes

    # A per-layer dictionary is the one-layer case of a cross-layer transcoder: these methods
    # match `CrossLayerTranscoder`'s, so splicing and dashboards treat both alike. `layer` is
    # the model layer (`layers[0]`; None means that one).
    @property
    def layers(self) -> list[int]:
        """`[L]` for hooks named `blocks.L.…` (the output hook's layer), else `[0]`."""
        layer = hook_layer(self.cfg.hook_out)
        layer = hook_layer(self.cfg.hook_in) if layer is None else layer
        return [0 if layer is None else layer]

    def encode_layer(self, x: Tensor, layer: int | None = None) -> Tensor:
        """Feature activations `[..., d_sae]` of `x [..., d_in]` (`encode`)."""
        self._check_layer(layer)
        return self.encode(x)

    def encoder(self, layer: int | None = None) -> EncoderWeights:
        """The encoder (`W_enc`, `b_enc`, `b_in`); a tied dictionary has none."""
        self._check_layer(layer)
        if self.W_enc is None:
            raise SparseCircuitsError(
                f"a {self.cfg.architecture!r} dictionary has no encoder matrix (it encodes with its decoder)"
            )
        return EncoderWeights(self.W_enc, self.b_enc, self.b_in)

    def decoders(self, layer: int | None = None) -> list[tuple[int, Tensor]]:
        """`[(its layer, W_dec [d_sae, d_out])]`: where the features write."""
        self._check_layer(layer)
        return [(self.layers[0], self.W_dec)]

    def layer_writes(self, x: Tensor, layer: int | None = None) -> Tensor:
        """What the input `x [n, d_in]` writes to each output the dictionary replaces:
        `[n, 1, d_out]`, the reconstruction (bias and skip term included)."""
        self._check_layer(layer)
        out = self.forward(x).out
        assert out is not None
        return out[:, None]

    def _check_layer(self, layer: int | None) -> None:
        if layer is not None and layer != self.layers[0]:
            raise SparseCircuitsError(
                f"this dictionary covers layer {self.layers[0]} only (got layer {layer})"
            )

    def reconstruct(self, x: Tensor) -> Tensor:
        """`forward(x).out` for `x [..., d_in]` of any leading shape -> `[..., d_out]` (for splicing)."""
        flat = x.reshape(-1, x.shape[-1])
        out = self.forward(flat).out
        assert out is not None
        return out.reshape(*x.shape[:-1], self.d_out)

    def loss(
        self, x: Tensor, target: Tensor | None = None, dead_mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss on `x [n, d_in]` vs `target [n, d_out]` (x for an SAE): `(loss, parts)`.

        `loss = recon + sparsity + aux_k_coefficient · aux`, `recon` being `fvu` or `mse`
        (`cfg.recon_loss`). `parts` are detached: 0-dim `loss`, `mse` (squared error per token),
        `fvu`, `l0`, `l1` (decoder-norm-weighted), `sparsity`, `aux`, `n_dead`, `fired_counts [d_sae]`.
        """
        x = self._check_input(x)
        target = self._check_target(x, target)
        fo = self.forward(x, dead_mask=dead_mask)
        assert fo.out is not None
        error = fo.out - target
        squared_error = squared_sum(error)
        total_variance = (
            (target - target.mean(dim=0)).pow_(2).sum().clamp_min(torch.finfo(target.dtype).tiny)
        )
        fvu = squared_error / total_variance
        mse = squared_error / x.shape[0]
        recon = fvu if self.cfg.recon_loss == "fvu" else mse
        sparsity = self.activation.sparsity_loss(self, fo, dead_mask)
        aux = self.activation.aux_loss(self, fo, error.detach(), total_variance, dead_mask)
        if self.training:
            self.activation.observe(self, fo)
        loss = recon + sparsity + self.cfg.aux_k_coefficient * aux
        with torch.no_grad():
            return loss, loss_parts(
                dead_mask,
                loss=loss,
                mse=mse,
                fvu=fvu,
                l0=fo.l0(),
                l1=fo.weighted_l1(self.W_dec.norm(dim=1)),
                sparsity=sparsity,
                aux=aux,
                fired_counts=fo.fired_counts(),
            )

    def decoder_norms(self) -> Tensor:
        """`||W_dec[i]||` for every latent, `[d_sae]`."""
        return self.W_dec.norm(dim=1)

    def folded_b_enc(self) -> Tensor:
        """`b_enc - b_in @ W_enc` `[d_sae]`: the encoder bias of the same map with `b_in = 0`."""
        assert self.W_enc is not None, "tied dictionaries have no encoder bias"
        with torch.no_grad():
            return self.b_enc - self.b_in @ self.W_enc

    def _check_input(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_in:
            raise SparseCircuitsError(
                f"input has width {x.shape[-1]} but this dictionary expects d_in={self.d_in} "
                f"(hook {self.cfg.hook_in!r}); pass activations from the hook it was trained on"
            )
        return x.to(self.W_dec.dtype)

    def _check_target(self, x: Tensor, target: Tensor | None) -> Tensor:
        if target is None:
            if self.cfg.kind != "sae":
                raise SparseCircuitsError(
                    f"a transcoder needs a target: pass the activations at {self.cfg.hook_out!r}"
                )
            return x
        if target.shape[-1] != self.d_out or target.shape[:-1] != x.shape[:-1]:
            raise SparseCircuitsError(
                f"target has shape {tuple(target.shape)}, expected {tuple(x.shape[:-1]) + (self.d_out,)}"
            )
        return target.to(self.W_dec.dtype)


def random_unit_vectors(
    shape: tuple[int, ...], dims: tuple[int, ...], generator: torch.Generator
) -> Tensor:
    """A `randn(shape)` draw from `generator` (on the CPU) scaled to unit norm over `dims`."""
    fresh = torch.randn(shape, generator=generator)
    return fresh / fresh.norm(dim=dims, keepdim=True)


@torch.no_grad()
def remove_parallel_grad(weight: Tensor) -> None:
    """Project out of `weight.grad` (`[rows, ...]`) the component parallel to each row of `weight`
    (a row is everything after the first axis), in place; no-op without a gradient."""
    if weight.grad is None:
        return
    rows, grad = weight.flatten(1), weight.grad.flatten(1)
    if cpu_topk.supports_rows(rows, grad):  # one pass per row instead of five [rows, d] temps
        cpu_topk.remove_parallel_rows(rows, grad)
        return
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(rows.dtype).eps)
    grad.sub_((grad * unit).sum(dim=1, keepdim=True) * unit)


@torch.no_grad()
def normalize_rows(weight: Tensor) -> None:
    """Rescale each row of `weight` (`[rows, ...]`, a row is everything after the first axis) to unit norm, in place."""
    if cpu_topk.supports_rows(weight.flatten(1)):
        cpu_topk.normalize_rows(weight.flatten(1))
        return
    norms = weight.flatten(1).norm(dim=1).clamp_min(torch.finfo(weight.dtype).eps)
    weight.div_(norms.view(-1, *([1] * (weight.ndim - 1))))


@torch.no_grad()
def shrink_untrained_output(
    coder: Dictionary | CrossLayerTranscoder, x_sample: Tensor, target_sample: Tensor
) -> None:
    """Scale a transcoder's encoder so its untrained output is at most 10% of the target's spread.

    Random features do not predict a transcoder's target, so their init output is pure error
    (FVU ≫ 1); activations scale linearly with the encoder, so one rescale of `W_enc`/`b_enc` fixes
    it. `coder` is a `Dictionary` or a cross-layer transcoder (samples then carry its layer axis).
    """
    out = coder.forward(x_sample).out
    assert out is not None
    written = out - coder.b_dec
    spread = (target_sample - coder.b_dec).norm(dim=-1).mean()
    size = written.norm(dim=-1).mean()
    if size > 0.1 * spread > 0:
        factor = 0.1 * spread / size
        coder.W_enc.mul_(factor)
        coder.b_enc.mul_(factor)


def centre(points: Tensor, geometric: bool) -> Tensor:
    """The centre `[d]` of `points [n, d]`: the geometric median when `geometric`, else the mean."""
    return geometric_median(points) if geometric else points.mean(dim=0)


@torch.no_grad()
def geometric_median(points: Tensor, n_iter: int = 20, eps: float = 1e-8) -> Tensor:
    """Geometric median of `points [n, d]` by Weiszfeld iterations, `[d]` (float64 internally)."""
    pts = points.double()
    median = pts.mean(dim=0)
    for _ in range(n_iter):
        weights = 1.0 / (pts - median).norm(dim=1).clamp_min(eps)
        new_median = (weights[:, None] * pts).sum(dim=0) / weights.sum()
        if (new_median - median).norm() <= eps * (1.0 + median.norm()):
            median = new_median
            break
        median = new_median
    return median.to(points.dtype)
