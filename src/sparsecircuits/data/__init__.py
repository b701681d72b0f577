"""Data: text sources, tokenize + pack, and the ActivationStore that feeds dictionary training."""

from __future__ import annotations

from sparsecircuits.data.cache import CachedActivationSource, harvest_to_disk
from sparsecircuits.data.sources import (
    EmbeddedSource,
    FileSource,
    HFDatasetSource,
    TextSource,
    make_source,
)
from sparsecircuits.data.store import ActivationStore, ActivationStoreConfig
from sparsecircuits.data.tokenize import (
    TokenBatcher,
    TokenSource,
    bos_token_id,
    check_context_size,
    eos_token_id,
    pack_tokens,
)

__all__ = [
    "ActivationStore",
    "ActivationStoreConfig",
    "CachedActivationSource",
    "EmbeddedSource",
    "FileSource",
    "HFDatasetSource",
    "TextSource",
    "TokenBatcher",
    "TokenSource",
    "bos_token_id",
    "check_context_size",
    "eos_token_id",
    "harvest_to_disk",
    "make_source",
    "pack_tokens",
]
