"""JumpReLU (Rajamanoharan et al. 2024; Gemma Scope; Anthropic 2025): learned thresholds trained
by straight-through estimators (docs/internals.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sparsecircuits.dictionaries import kernels, sparse_step
from sparsecircuits.dictionaries.activations.base import (
    Activation,
    ActivationParams,
    ForwardOutput,
    Owner,
    firing_quantiles,
    require_nonnegative,
)
from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from sparsecircuits.dictionaries.config import DictionaryConfig


def _rectangle(z: Tensor) -> Tensor:
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre_acts: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre_acts, threshold)
        ctx.bandwidth = bandwidth
        return pre_acts * (pre_acts > threshold)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        pre_acts, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        grad_pre = grad_out * (pre_acts > threshold)
        kernel = _rectangle((pre_acts - threshold) / bandwidth)
        grad_threshold = -(threshold / bandwidth) * kernel * grad_out
        return grad_pre, _sum_to(grad_threshold, threshold.shape), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre_acts: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre_acts, threshold)
        ctx.bandwidth = bandwidth
        return (pre_acts > threshold).to(pre_acts.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        pre_acts, threshold = ctx.saved_tensors
        bandwidth = ctx.bandwidth
        grad_threshold = (
            -(1.0 / bandwidth) * _rectangle((pre_acts - threshold) / bandwidth) * grad_out
        )
        return None, _sum_to(grad_threshold, threshold.shape), None


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient `[..., *shape]` back down to `shape`."""
    return grad.reshape(-1, *shape).sum(dim=0) if grad.shape != shape else grad


def jumprelu(pre_acts: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """`pre_acts · H(pre_acts - threshold)` with the rectangle-kernel STE for `threshold` (broadcast on the last dims)."""
    return _JumpReLU.apply(pre_acts, threshold, bandwidth)


def step(pre_acts: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """`H(pre_acts - threshold)` (float) with the rectangle-kernel STE for `threshold` only."""
    return _Step.apply(pre_acts, threshold, bandwidth)


def tanh_penalty(feature_acts: Tensor, decoder_norms: Tensor, scale: float) -> Tensor:
    """`mean_tokens Σ_i tanh(scale · ||W_dec[i]|| · f_i)` (0-dim); `feature_acts [n, ..., d_sae]`."""
    per_token = torch.tanh(scale * feature_acts.abs() * decoder_norms).reshape(
        feature_acts.shape[0], -1
    )
    return per_token.sum(dim=1).mean()


@dataclass
class JumpReLUParams(ActivationParams):
    """Rajamanoharan et al. 2024 / SAELens defaults; the sparsity penalty (docs/internals.md)."""

    tag_format = "l0-{l0_coefficient:g}"
    init_l0: float = 0.0  # > 0: thresholds set so training starts at this L0 (see ReLU)
    l0_coefficient: float = 1.0
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.01
    jumprelu_sparsity: str = ""  # "step" (L0) | "tanh" (Anthropic); "": tanh for a CLT, else step
    tanh_scale: float = 4.0
    pre_act_loss_coefficient: float = 0.0  # Anthropic's pre-activation loss on dead latents (3e-6)

    def resolve(self, cfg: DictionaryConfig) -> None:
        """Fill `jumprelu_sparsity` from `cfg.kind`; check the values."""
        self.jumprelu_sparsity = self.jumprelu_sparsity or ("tanh" if cfg.kind == "clt" else "step")
        if self.jumprelu_sparsity not in ("step", "tanh"):
            raise SparseCircuitsError(
                f"jumprelu_sparsity must be 'step' or 'tanh' (got {self.jumprelu_sparsity!r})"
            )
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold <= 0:
            raise SparseCircuitsError("jumprelu_bandwidth and jumprelu_init_threshold must be > 0")
        require_nonnegative(self, "init_l0", "l0_coefficient")


class JumpReLUActivation(Activation):
    """JumpReLU with a learned `log_threshold [d_sae]` parameter."""

    name = "jumprelu"
    Params = JumpReLUParams
    params: JumpReLUParams
    step_mode: str | None = None  # "sparse" | "dense": how the last train step ran

    def __init__(self, cfg: DictionaryConfig) -> None:
        super().__init__(cfg)
        factory: dict[str, Any] = {"dtype": cfg.torch_dtype, "device": cfg.device}
        self.log_threshold = nn.Parameter(
            torch.full((cfg.d_sae,), math.log(self.params.jumprelu_init_threshold), **factory)
        )

    @property
    def threshold(self) -> Tensor:
        """`exp(log_threshold)`, `[d_sae]`."""
        return self.log_threshold.exp()

    @torch.no_grad()
    def init_from_data(self, dictionary: Owner, x_in: Tensor) -> None:
        """With `init_l0 > 0`, put each threshold at the pre-activation quantile of `x_in`
        `[n, d_in]` where the latent fires on `init_l0 / d_sae` of the tokens."""
        if self.params.init_l0 > 0 and dictionary.W_enc is not None:
            theta = firing_quantiles(dictionary, x_in, self.params.init_l0).clamp_min(1e-6)
            self.log_threshold.copy_(theta.log().to(self.log_threshold.dtype))

    def encode(self, dictionary: Owner, x_in: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """Dense codes `u · H(u - θ)`; `pre_acts` kept for the L0 / pre-activation losses."""
        pre_acts = sparse_step.pre_activations(x_in, dictionary.W_enc, dictionary.b_enc)
        acts = jumprelu(pre_acts, self.threshold, self.params.jumprelu_bandwidth)
        return ForwardOutput(pre_acts=pre_acts, dense_acts=acts, d_sae=self.cfg.d_sae)

    def encode_input(self, dictionary: Owner, x: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        """`encode(x - b_in)`; in a train step, row-sparse once few latents are active
        (`sparse_step`: the kept entries are the active ones and those in the threshold's
        gradient window). The dead-latent pre-activation loss reads every pre-activation of
        the dead latents, so while it is on and latents are dead the step stays dense."""
        params = self.params
        needs_all = (
            params.pre_act_loss_coefficient > 0 and dead_mask is not None and bool(dead_mask.any())
        )
        if not sparse_step.applies(dictionary, x):
            return super().encode_input(dictionary, x, dead_mask)
        if needs_all:
            self.step_mode = "dense"
            return super().encode_input(dictionary, x, dead_mask)
        threshold = self.threshold
        bandwidth = params.jumprelu_bandwidth

        def sparse(pre: Tensor, pattern: sparse_step.RowPattern) -> sparse_step.RowSparseOutput:
            kept_threshold = kernels.take(threshold, pattern.cols)
            return sparse_step.RowSparseOutput(
                acts=jumprelu(pre, kept_threshold, bandwidth),
                pattern=pattern,
                kept_pre=pre,
                kept_threshold=kept_threshold,
                d_sae=self.cfg.d_sae,
            )

        codes, self.step_mode = sparse_step.switched_encode(
            dictionary,
            x,
            sparse_step.jumprelu_cutoffs(threshold, bandwidth),
            dense=lambda x_in: self.encode(dictionary, x_in, dead_mask),
            sparse=sparse,
        )
        return codes

    def sparsity_loss(
        self, dictionary: Owner, codes: ForwardOutput, dead_mask: Tensor | None
    ) -> Tensor:
        """Step-L0 or tanh penalty (docs/internals.md), plus the dead-latent pre-activation loss."""
        if isinstance(codes, sparse_step.RowSparseOutput):
            return self._sparse_sparsity_loss(dictionary, codes)
        assert codes.pre_acts is not None
        params = self.params
        threshold = self.threshold
        norms = dictionary.W_dec.norm(dim=1)
        if params.jumprelu_sparsity == "tanh":
            penalty = tanh_penalty(codes.feature_acts, norms, params.tanh_scale)
        else:
            penalty = step(codes.pre_acts, threshold, params.jumprelu_bandwidth).sum(dim=1).mean()
        loss = params.l0_coefficient * penalty
        if params.pre_act_loss_coefficient > 0 and dead_mask is not None and bool(dead_mask.any()):
            shortfall = (threshold - codes.pre_acts).relu() * dead_mask * norms
            loss = loss + params.pre_act_loss_coefficient * shortfall.sum(dim=1).mean()
        return loss

    def _sparse_sparsity_loss(
        self, dictionary: Owner, codes: sparse_step.RowSparseOutput
    ) -> Tensor:
        """`sparsity_loss` over the kept entries: the others add 0 and no gradient (their
        activation is 0 and they lie outside the threshold's window)."""
        assert codes.pattern is not None and codes.acts is not None
        assert codes.kept_pre is not None and codes.kept_threshold is not None
        params = self.params
        n = max(codes.pattern.n_rows, 1)
        if params.jumprelu_sparsity == "tanh":
            norms = kernels.take(dictionary.W_dec.norm(dim=1), codes.pattern.cols)
            per_entry = torch.tanh(params.tanh_scale * codes.acts.abs() * norms)
        else:
            per_entry = step(codes.kept_pre, codes.kept_threshold, params.jumprelu_bandwidth)
        return params.l0_coefficient * per_entry.sum() / n

    def saelens_architecture(self) -> str | None:
        """ "jumprelu" / "jumprelu_transcoder" / "jumprelu_skip_transcoder"."""
        return {
            "sae": "jumprelu",
            "transcoder": "jumprelu_transcoder",
            "skip_transcoder": "jumprelu_skip_transcoder",
        }[self.cfg.kind]

    def saelens_weights(self) -> dict[str, Tensor]:
        """`threshold = exp(log_threshold)`."""
        return {"threshold": self.threshold.detach()}

    def adopt_saelens_weights(self, tensors: dict[str, Tensor]) -> None:
        """Drop SAELens' `threshold`, deriving `activation.log_threshold` from it when absent."""
        threshold = tensors.pop("threshold", None)
        if threshold is not None and "activation.log_threshold" not in tensors:
            tensors["activation.log_threshold"] = threshold.log()
