"""The output nodes of an attribution graph: what the graph explains.

A `GraphTarget` is `direction · final_norm_output` at the prompt's last position, with a weight
(its share of the logits' influence in pruning) and a label. By default the graph explains the
most likely next tokens (`salient_targets`: de-meaned logits weighted by their probability, as
circuit-tracer does); a researcher can instead ask for one token's logit, a logit difference
between two tokens, or any direction in the unembedding's input space (circuit-tracer's custom
targets). Token targets keep their vocabulary id; the others get ids past the vocabulary
(`vocab_size + i`), as circuit-tracer numbers its custom targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsecircuits.errors import SparseCircuitsError

if TYPE_CHECKING:
    from sparsecircuits.circuits.replacement import ReplacementModel


@dataclass
class GraphTarget:
    """`direction [d] · final_norm_output` at the last position; `weight` its influence weight,
    `vocab_idx` its token id (or None: numbered past the vocabulary)."""

    label: str
    direction: Tensor
    weight: float
    vocab_idx: int | None = None


def _demeaned_columns(replacement: ReplacementModel, ids: Tensor) -> Tensor:
    """De-meaned unembedding columns `[k, d]`: `logit_t - mean_v logit_v` as directions."""
    W_U = replacement.W_U
    return (W_U[:, ids.to(W_U.device)] - W_U.mean(1, keepdim=True)).T


def salient_targets(
    replacement: ReplacementModel, logits: Tensor, max_n_logits: int, desired_prob: float
) -> list[GraphTarget]:
    """The most likely next tokens of `logits [vocab]` up to cumulative probability
    `desired_prob` (at most `max_n_logits`), as de-meaned logit targets weighted by probability."""
    from sparsecircuits.circuits.graph.rows import salient_logits

    ids, probs = salient_logits(logits, max_n_logits, desired_prob)
    columns = _demeaned_columns(replacement, ids)
    tokenizer = replacement.adapter.tokenizer
    return [
        GraphTarget(tokenizer.decode([int(i)]), columns[k], float(probs[k]), int(i))
        for k, i in enumerate(ids.tolist())
    ]


def token_id(replacement: ReplacementModel, token: int | str) -> int:
    """The id of `token` (an id, or a string that is exactly one token); raise otherwise."""
    vocab = int(replacement.W_U.shape[1])
    if isinstance(token, int):
        if not 0 <= token < vocab:
            raise SparseCircuitsError(f"token id {token} out of range; the vocabulary has {vocab}")
        return token
    ids = replacement.adapter.tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise SparseCircuitsError(
            f"{token!r} is {len(ids)} tokens for this tokenizer; give a single-token string or an id"
        )
    return int(ids[0])


def token_target(replacement: ReplacementModel, logits: Tensor, token: int | str) -> GraphTarget:
    """The de-meaned logit of `token`, weighted by its probability under `logits [vocab]`."""
    tid = token_id(replacement, token)
    prob = float(torch.softmax(logits.double(), -1)[tid])
    direction = _demeaned_columns(replacement, torch.tensor([tid]))[0]
    return GraphTarget(replacement.adapter.tokenizer.decode([tid]), direction, prob, tid)


def logit_diff_target(
    replacement: ReplacementModel, good: int | str, bad: int | str
) -> GraphTarget:
    """`logit(good) - logit(bad)`, weight 1."""
    g, b = token_id(replacement, good), token_id(replacement, bad)
    direction = replacement.W_U[:, g] - replacement.W_U[:, b]
    decode = replacement.adapter.tokenizer.decode
    return GraphTarget(f"logit({decode([g])!r}) - logit({decode([b])!r})", direction, 1.0)


def direction_target(
    replacement: ReplacementModel, direction: Tensor, label: str = "direction"
) -> GraphTarget:
    """`direction [d_model] · final_norm_output`, weight 1."""
    vector = torch.as_tensor(direction).reshape(-1)
    if vector.numel() != replacement.d_model:
        raise SparseCircuitsError(
            f"a direction target needs {replacement.d_model} numbers (d_model), got {vector.numel()}"
        )
    return GraphTarget(label, vector.to(replacement.device, replacement.dtype), 1.0)


def target_arrays(
    replacement: ReplacementModel, targets: Sequence[GraphTarget]
) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """`(ids [K], weights [K], directions [K, d], labels)` of the targets, ids past the
    vocabulary for the ones without a token."""
    if not targets:
        raise SparseCircuitsError("a graph needs at least one target")
    vocab = int(replacement.W_U.shape[1])
    ids = [vocab + k if t.vocab_idx is None else t.vocab_idx for k, t in enumerate(targets)]
    directions = torch.stack(
        [t.direction.to(replacement.device, replacement.dtype) for t in targets]
    )
    weights = torch.tensor([t.weight for t in targets], dtype=torch.float32)
    return torch.tensor(ids), weights, directions, [t.label for t in targets]
