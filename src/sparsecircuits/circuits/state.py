"""`ReplacementState`: everything one replacement-model run computed, and the records its
forward pass assembles it from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.errors import SparseCircuitsError


@dataclass(frozen=True)
class BlockRecord:
    """What one block computed: residuals, attention and MLP outputs `[b,p,d]`, norm scales
    `[b,p,1]`, values `[b,p,h,d_head]`, pattern `[b,h,q,k]`, the post-attention norm's scale
    `[b,p,1]` and the post-MLP norm's where it is outside the transcoder (else None) (see
    `ReplacementState`; each field is named as the state's list it joins)."""

    resid_pre: Tensor
    resid_mid: Tensor
    resid_post: Tensor
    attn_out: Tensor
    mlp_in: Tensor
    mlp_out: Tensor
    ln1_scale: Tensor
    ln2_scale: Tensor
    values: Tensor
    patterns: Tensor
    ln1_post_scale: Tensor | None = None
    ln2_post_scale: Tensor | None = None


@dataclass(frozen=True)
class TranscoderRecord:
    """What one transcoder layer computed: `tc_in [b,p,d]`, `feature_pre`, `feature_acts`,
    `feature_gain [b,p,d_sae]`, `tc_out`, `errors [b,p,d]` (named as the state's dicts)."""

    tc_in: Tensor
    feature_pre: Tensor
    feature_acts: Tensor
    feature_gain: Tensor
    tc_out: Tensor
    errors: Tensor


@dataclass
class ReplacementState:
    """Everything a replacement-model run computed, batched over prompts (`b` prompts, `p` positions).

    Per layer (lists indexed by layer): `resid_pre`, `resid_mid`, `resid_post`, `attn_out`,
    `mlp_in` (what the MLP / transcoder sees after ln2 and its gain), `mlp_out` (what was
    added to the residual) `[b,p,d]`; `ln1_scale`, `ln2_scale` `[b,p,1]` (norm denominators);
    `values [b,p,h,d_head]` (value vectors, bias included); `patterns [b,h,q,k]`;
    `ln1_post_scale [b,p,1]` (the post-attention norm's denominator; None for families without
    one). `attn_out` is after that norm (what joins the residual). `ln2_post_scale [b,p,1]`:
    the post-MLP norm's denominator at transcoder layers writing before that norm (None
    elsewhere); there `tc_out` and `errors` are before the norm, `mlp_out` after it.
    Per transcoder layer (dicts): `tc_in` (the transcoder's input), `feature_pre`,
    `feature_acts`, `feature_gain` (`act/pre` where active, else 0) `[b,p,d_sae]`; `tc_out`,
    `errors` `[b,p,d]`. Global: `input_ids [b,p]`, `embed [b,p,d]` (token + learned position),
    `ln_final_scale [b,p,1]`, `final_normed [b,p,d]` (ln_final output, gain applied),
    `logits [b,p,vocab]` (the model's, after Gemma's final soft-cap; before it they are
    `final_normed @ W_U + b_U`). `frozen` is the default `freeze` of `forward_with`.
    """

    input_ids: Tensor
    embed: Tensor
    resid_pre: list[Tensor]
    resid_mid: list[Tensor]
    resid_post: list[Tensor]
    attn_out: list[Tensor]
    mlp_in: list[Tensor]
    mlp_out: list[Tensor]
    ln1_scale: list[Tensor]
    ln2_scale: list[Tensor]
    values: list[Tensor]
    patterns: list[Tensor]
    tc_in: dict[int, Tensor]
    feature_pre: dict[int, Tensor]
    feature_acts: dict[int, Tensor]
    feature_gain: dict[int, Tensor]
    tc_out: dict[int, Tensor]
    errors: dict[int, Tensor]
    ln_final_scale: Tensor
    final_normed: Tensor
    logits: Tensor
    ln1_post_scale: list[Tensor | None] = field(default_factory=list)
    ln2_post_scale: list[Tensor | None] = field(default_factory=list)
    parallel_residual: bool = False
    frozen: bool = True

    @classmethod
    def assemble(
        cls,
        input_ids: Tensor,
        embed: Tensor,
        blocks: Sequence[BlockRecord],
        transcoders: dict[int, TranscoderRecord],
        ln_final_scale: Tensor,
        final_normed: Tensor,
        logits: Tensor,
        parallel_residual: bool,
    ) -> ReplacementState:
        """The state of one run from its per-block and per-transcoder-layer records."""
        per_block: dict[str, Any] = {
            f.name: [getattr(b, f.name) for b in blocks] for f in fields(BlockRecord)
        }
        per_layer: dict[str, Any] = {
            f.name: {layer: getattr(t, f.name) for layer, t in transcoders.items()}
            for f in fields(TranscoderRecord)
        }
        return cls(
            input_ids=input_ids,
            embed=embed,
            ln_final_scale=ln_final_scale,
            final_normed=final_normed,
            logits=logits,
            parallel_residual=parallel_residual,
            **per_block,
            **per_layer,
        )

    @property
    def n_prompts(self) -> int:
        """Number of prompts (batch size)."""
        return int(self.input_ids.shape[0])

    @property
    def n_pos(self) -> int:
        """Number of positions."""
        return int(self.input_ids.shape[1])

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return len(self.resid_pre)

    @property
    def resid_final(self) -> Tensor:
        """Residual stream after the last block `[b,p,d]` (input of ln_final)."""
        return self.resid_post[-1]

    def resid_at(self, read: int) -> Tensor:
        """Return the residual stream `[b,p,d]` that reader `read` sees (see module docstring)."""
        n = self.n_layers
        if not 0 <= read <= 2 * n:
            raise SparseCircuitsError(f"read point {read} is out of range 0..{2 * n}")
        if read == 2 * n:
            return self.resid_final
        layer, odd = divmod(read, 2)
        return self.resid_mid[layer] if odd else self.resid_pre[layer]

    def select(self, index: Tensor | Sequence[int]) -> ReplacementState:
        """Return the state of prompts `index` (repeats allowed: used to batch many targets)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.input_ids.device)
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                values[f.name] = value.index_select(0, index)
            elif isinstance(value, list):
                values[f.name] = [None if t is None else t.index_select(0, index) for t in value]
            elif isinstance(value, dict):
                values[f.name] = {k: t.index_select(0, index) for k, t in value.items()}
        return replace(self, **values)
