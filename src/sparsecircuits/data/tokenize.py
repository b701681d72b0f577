"""Tokenize documents and pack them into fixed-length contexts (packing and BOS policy in
docs/internals.md)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.tokens import bos_token_id as models_bos_token_id

if TYPE_CHECKING:
    from sparsecircuits.data.sources import TextSource

T = TypeVar("T")

__all__ = [
    "TokenBatcher",
    "TokenSource",
    "bos_token_id",
    "check_context_size",
    "eos_token_id",
    "pack_tokens",
]


def bos_token_id(tokenizer: Any, config: Any = None) -> int:
    """Return the id packed contexts start with (`models.tokens.bos_token_id`: the tokenizer's
    BOS, else the model config's, else EOS); raise when there is none."""
    token_id = models_bos_token_id(tokenizer, config)
    if token_id is None:
        raise SparseCircuitsError(
            "the tokenizer has neither a BOS nor an EOS token; pack with prepend_bos=False"
        )
    return token_id


def eos_token_id(tokenizer: Any) -> int:
    """Return the id placed after every document: EOS, or BOS when the tokenizer has no EOS."""
    for token_id in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(tokenizer, "bos_token_id", None),
    ):
        if token_id is not None:
            return int(token_id)
    raise SparseCircuitsError(
        "the tokenizer has neither an EOS nor a BOS token to separate documents; use a tokenizer with one"
    )


def check_context_size(
    context_size: int, max_context: int | None, prepend_bos: bool = True
) -> None:
    """Raise `SparseCircuitsError` unless `context_size` fits the model and holds a real token."""
    smallest = 2 if prepend_bos else 1
    if context_size < smallest:
        raise SparseCircuitsError(
            f"context_size {context_size} is too small; use at least {smallest}"
        )
    if max_context is not None and context_size > max_context:
        raise SparseCircuitsError(
            f"context_size {context_size} is longer than the model's maximum context {max_context}; "
            f"use context_size <= {max_context}"
        )


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last one shorter when the items run out)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def pack_tokens(
    texts: Iterable[str],
    tokenizer: Any,
    context_size: int,
    prepend_bos: bool = True,
    *,
    max_context: int | None = None,
    tokenize_batch: int = 64,
    name: str = "source",
    model_config: Any = None,
) -> Iterator[Tensor]:
    """Return an iterator of packed LongTensor contexts ``[context_size]`` (docs/internals.md).

    A `context_size` over `max_context` raises at once; texts shorter than one context raise at
    exhaustion. `model_config` lets the BOS rule fall back to the model's BOS id.
    """
    check_context_size(context_size, max_context, prepend_bos)
    bos = bos_token_id(tokenizer, model_config) if prepend_bos else None
    separator = eos_token_id(tokenizer)
    return _pack(texts, tokenizer, context_size, bos, separator, tokenize_batch, name)


def _pack(
    texts: Iterable[str],
    tokenizer: Any,
    context_size: int,
    bos: int | None,
    separator: int,
    tokenize_batch: int,
    name: str,
) -> Iterator[Tensor]:
    body = context_size - 1 if bos is not None else context_size
    pending: list[int] = []
    n_tokens = 0
    n_contexts = 0
    for batch in _batches(texts, tokenize_batch):
        encoded = tokenizer(
            batch, add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        for ids in encoded:
            pending.extend(ids)
            pending.append(separator)
            n_tokens += len(ids) + 1
        n_full = len(pending) // body
        if n_full == 0:
            continue
        block = torch.tensor(pending[: n_full * body], dtype=torch.long).view(n_full, body)
        del pending[: n_full * body]
        if bos is not None:
            block = torch.cat([torch.full((n_full, 1), bos, dtype=torch.long), block], dim=1)
        n_contexts += n_full
        yield from block.unbind(0)
    if n_contexts == 0:
        raise SparseCircuitsError(
            f"dataset {name} yielded only {n_tokens} tokens, fewer than one context of "
            f"{context_size}; use more text or a smaller context_size"
        )


class TokenSource:
    """A re-iterable stream of packed contexts (LongTensors ``[context_size]``): each `iter()`
    restarts `pack_tokens` on a fresh `text_source.iter_texts()`, so it can be replayed to resume."""

    def __init__(
        self,
        text_source: TextSource,
        tokenizer: Any,
        context_size: int,
        prepend_bos: bool = True,
        max_context: int | None = None,
        model_config: Any = None,
    ) -> None:
        check_context_size(context_size, max_context, prepend_bos)
        self.text_source = text_source
        self.tokenizer = tokenizer
        self.model_config = model_config
        self.context_size = context_size
        self.prepend_bos = prepend_bos
        self.max_context = max_context

    def __repr__(self) -> str:
        return f"TokenSource({self.text_source!r}, context_size={self.context_size})"

    @property
    def bos_token_id(self) -> int | None:
        """The id at position 0 of every context, or None with ``prepend_bos=False``."""
        return bos_token_id(self.tokenizer, self.model_config) if self.prepend_bos else None

    def __iter__(self) -> Iterator[Tensor]:
        return pack_tokens(
            self.text_source.iter_texts(),
            self.tokenizer,
            self.context_size,
            self.prepend_bos,
            max_context=self.max_context,
            name=getattr(self.text_source, "name", repr(self.text_source)),
            model_config=self.model_config,
        )


class TokenBatcher:
    """Group contexts into model batches, LongTensors ``[batch_size, context]`` (the last one
    smaller unless `drop_last`); re-iterable when `contexts` is."""

    def __init__(
        self, contexts: Iterable[Tensor], batch_size: int, drop_last: bool = False
    ) -> None:
        if batch_size < 1:
            raise SparseCircuitsError(f"batch_size must be at least 1, not {batch_size}")
        self.contexts = contexts
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[Tensor]:
        for rows in _batches(self.contexts, self.batch_size):
            if len(rows) == self.batch_size or not self.drop_last:
                yield torch.stack(rows)
