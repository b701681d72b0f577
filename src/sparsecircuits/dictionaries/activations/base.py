"""What every activation family provides, and `ForwardOutput`, the codes a forward pass returns
(the hook points in docs/internals.md)."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Union

import torch
from torch import Tensor, nn

from sparsecircuits.dictionaries.kernels import take, to_dense
from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.base import Dictionary
    from sparsecircuits.dictionaries.clt import CLTLayer
    from sparsecircuits.dictionaries.config import DictionaryConfig


# What an activation reads its weights from: a `Dictionary`, or one layer of a cross-layer
# transcoder (`CLTLayer`, whose `W_dec` is the layer's decoder blocks side by side).
Owner = Union["Dictionary", "CLTLayer"]


@dataclass
class ForwardOutput:
    """Result of `Dictionary.forward` on `n` tokens; iterating yields `(out, feature_acts)`.

    `out [n, d_out]` (None until decoded); dense families fill `dense_acts [n, d_sae]`, TopK-like ones
    `values, indices [n, k]` (and `aux_values, aux_indices [n, k_aux]` with a dead mask);
    `pre_acts [n, d_sae]` where the family computed it with autograd.
    """

    out: Tensor | None = None
    pre_acts: Tensor | None = None
    dense_acts: Tensor | None = None
    values: Tensor | None = None
    indices: Tensor | None = None
    aux_values: Tensor | None = None
    aux_indices: Tensor | None = None
    d_sae: int = 0
    extras: dict[str, Tensor] = field(
        default_factory=dict
    )  # family-specific tensors for its losses
    # dense families: one `!= 0` pass shared by `l0` and `fired_counts`, and the last
    # `weighted_l1` (the loss and its logged metric ask for the same number)
    _nonzero: Tensor | None = field(default=None, repr=False)
    _l1_cache: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @property
    def feature_acts(self) -> Tensor:
        """Dense feature activations `[n, d_sae]` (built from values/indices when sparse)."""
        if self.dense_acts is None:
            assert self.values is not None and self.indices is not None
            self.dense_acts = to_dense(self.values, self.indices, self.d_sae)
        return self.dense_acts

    @property
    def is_sparse(self) -> bool:
        """True when the codes are held as `values, indices` pairs."""
        return self.indices is not None

    def _nonzero_mask(self) -> Tensor:
        if self._nonzero is None:
            self._nonzero = self.feature_acts.detach() != 0
        return self._nonzero

    def l0(self) -> Tensor:
        """Mean number of nonzero features per token (0-dim)."""
        if self.values is not None:
            return (self.values != 0).sum(dim=1).float().mean()
        mask = self._nonzero_mask()
        return mask.sum().float() / max(mask.shape[0], 1)

    def fired_counts(self) -> Tensor:
        """Number of tokens in which each latent was nonzero, int64 `[d_sae]`."""
        if self.values is not None and self.indices is not None:
            fired = self.indices[self.values != 0]
            return torch.bincount(fired, minlength=self.d_sae)
        return self._nonzero_mask().sum(dim=0)

    def weighted_l1(self, decoder_norms: Tensor) -> Tensor:
        """Mean over tokens of `Σ_i |f_i| · ||W_dec[i]||` (0-dim, differentiable).

        A second call with equal norms (the logged metric after the loss term) returns the first
        result instead of another pass over the dense activations."""
        if self.values is not None and self.indices is not None:
            return (self.values.abs() * take(decoder_norms, self.indices)).sum(dim=1).mean()
        cached = self._l1_cache
        if cached is not None and torch.equal(cached[0], decoder_norms.detach()):
            return cached[1] if torch.is_grad_enabled() else cached[1].detach()
        l1 = (self.feature_acts.abs() @ decoder_norms).mean()
        self._l1_cache = (decoder_norms.detach(), l1)
        return l1

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield self.out
        yield self.feature_acts


@dataclass
class ActivationParams:
    """A family's own settings (none here), one field with its default each; the names are the flat
    config keys (`k`, ...), so they must not reuse a `DictionaryConfig` field name."""

    def resolve(self, cfg: DictionaryConfig) -> None:
        """Fill the defaults that depend on `cfg`'s shapes or kind, and raise
        `SparseCircuitsError` for an invalid value (nothing to do here)."""

    tag_format: ClassVar[str] = ""  # the run-name label, a format of the settings ("k{k}")

    def tag(self) -> str:
        """The sparsity setting as a short label for run names (e.g. "k32"); "" when none."""
        return self.tag_format.format(**dataclasses.asdict(self))


def require_nonnegative(params: ActivationParams, *names: str) -> None:
    """Raise `SparseCircuitsError` when a setting among `names` of `params` is negative."""
    negative = [name for name in names if getattr(params, name) < 0]
    if negative:
        raise SparseCircuitsError(f"{' and '.join(negative)} must be >= 0")


class Activation(nn.Module, ABC):
    """Base class of an activation family (ReLU, TopK, ...): sets `name` (the `architecture`
    value), implements `encode`, overrides the loss and training hooks it needs and sets `Params`
    when it has settings (`self.params`); its parameters and buffers are saved with the dictionary."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[ActivationParams]] = ActivationParams
    # "unit": W_dec rows kept at unit norm (activations carry the scale); "free": the loss sets them
    default_decoder_norm: ClassVar[str] = "free"
    default_recon_loss: ClassVar[str] = "mse"  # "fvu" (scale-free) | "mse" (SAELens' sum over dims)
    sae_only: ClassVar[bool] = False  # True: the input must be the target (kind "sae")
    uses_input_bias: ClassVar[bool] = True  # False: b_in kept zero, frozen (MP centres by b_dec)
    tied: ClassVar[bool] = False  # True: no W_enc/b_enc, the encoder reads W_dec (MP)
    params: ActivationParams

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.params = cfg.params

    @abstractmethod
    def encode(self, dictionary: Owner, x_in: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """Return the codes of `x_in [n, d_in]` (already minus `b_in`); `out` left None."""

    def encode_input(self, dictionary: Owner, x: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """The codes of the raw input `x [n, d_in]`: `encode(x - b_in)` unless a family's
        kernel takes `b_in` itself (TopK: its gradient then skips the input gradient)."""
        return self.encode(dictionary, x - dictionary.b_in, dead_mask)

    def sparsity_loss(
        self, dictionary: Owner, codes: ForwardOutput, dead_mask: Tensor | None
    ) -> Tensor:
        """The coefficient-scaled sparsity term added to the loss (0-dim); zero by default."""
        return dictionary.W_dec.new_zeros(())

    @torch.no_grad()
    def observe(self, dictionary: Owner, codes: ForwardOutput) -> None:
        """Called by `Dictionary.loss` in training mode with the step's codes (e.g. threshold EMAs)."""

    def aux_loss(
        self,
        dictionary: Owner,
        codes: ForwardOutput,
        error: Tensor,
        total_variance: Tensor,
        dead_mask: Tensor | None,
    ) -> Tensor:
        """Unscaled auxiliary loss (0-dim); `error = out - target` is detached (the residual left
        to explain is `-error`). Zero by default."""
        return dictionary.W_dec.new_zeros(())

    @torch.no_grad()
    def init_from_data(self, dictionary: Owner, x_in: Tensor) -> None:
        """Called once by `init_biases_from_data` with `x_in [n, d_in]` (minus `b_in`); no-op by default."""

    @torch.no_grad()
    def after_step(self, dictionary: Owner) -> None:
        """Called after each optimizer step (e.g. to clamp or re-estimate thresholds)."""

    def saelens_architecture(self) -> str | None:
        """SAELens architecture name for this family and `cfg.kind`, or None when SAELens has none."""
        return None

    def saelens_weights(self) -> dict[str, Tensor]:
        """Family tensors in SAELens' naming for `sae_weights.safetensors` (e.g. `threshold`)."""
        return {}

    def adopt_saelens_weights(self, tensors: dict[str, Tensor]) -> None:
        """Replace, in place, the SAELens-named family tensors of a loaded folder by our state-dict
        entries (keeping ours when the `sparsecircuits_weights` file already supplied them)."""

    def extra_cfg(self) -> dict[str, Any]:
        """Architecture fields SAELens reads from `cfg.json` for this family (e.g. `k`)."""
        return {}


def firing_quantiles(dictionary: Owner, x_in: Tensor, l0: float) -> Tensor:
    """Per latent, the pre-activation value `[d_sae]` exceeded on `l0 / d_sae` of `x_in [n, d_in]`:
    thresholds there start a ReLU or JumpReLU dictionary at mean L0 ≈ `l0` (`init_l0`), which a
    short run largely keeps."""
    assert dictionary.W_enc is not None
    pre = torch.addmm(dictionary.b_enc, x_in.to(dictionary.W_enc.dtype), dictionary.W_enc)
    n = pre.shape[0]
    # kthvalue, not quantile: torch.quantile refuses inputs above 2**24 elements
    rank = min(max(round(n * (1.0 - l0 / pre.shape[1])), 1), n)
    return pre.kthvalue(rank, dim=0).values
