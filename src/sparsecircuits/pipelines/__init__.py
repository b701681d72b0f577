"""The pipelines the CLI drives, on top of every stage: training runs (single-process or
data-parallel), the dictionary sweep, and their reports."""

from __future__ import annotations

from sparsecircuits.pipelines.report import write_report
from sparsecircuits.pipelines.train import (
    DictionarySpec,
    RunConfig,
    TrainingContexts,
    build_dictionaries,
    check_compatible,
    context_stream,
    eval_batches,
    load_dictionaries,
    store_hooks,
    train_run,
)

__all__ = [
    "DictionarySpec",
    "RunConfig",
    "TrainingContexts",
    "build_dictionaries",
    "check_compatible",
    "context_stream",
    "eval_batches",
    "load_dictionaries",
    "store_hooks",
    "train_run",
    "write_report",
]
