"""Hooked access to Hugging Face causal LMs: canonical hook names, run-with-cache, splice.

`load_model` returns a `ModelAdapter`; `architectures` holds one table per model family;
`tiny.build_tiny_model` writes small random models for tests.
"""

from sparsecircuits.models.adapter import ModelAdapter
from sparsecircuits.models.architectures import AttentionWeights, NormParams, supported_model_types
from sparsecircuits.models.loading import load_model, resolve_device

__all__ = [
    "AttentionWeights",
    "ModelAdapter",
    "NormParams",
    "load_model",
    "resolve_device",
    "supported_model_types",
]
