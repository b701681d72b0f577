"""sparsecircuits: transcoders, sparse autoencoders and circuit tracing for transformer LMs."""

from __future__ import annotations

from sparsecircuits import threads as _threads

# Before torch or numba load their OpenMP runtimes, which read the wait policy once.
_threads.configure_environment()

from sparsecircuits.errors import SparseCircuitsError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["SparseCircuitsError", "__version__", "load_model", "load_transcoders"]


def load_model(name_or_path: str = "embedded", **kwargs):  # type: ignore[no-untyped-def]
    """Return a `ModelAdapter` for a hub id or `hf://ORG/REPO[/SUBPATH]` (fetched into the
    Hugging Face cache), a local directory, or "embedded"."""
    from sparsecircuits.models import load_model as _load_model

    return _load_model(name_or_path, **kwargs)


def load_transcoders(name_or_path: str = "embedded", **kwargs):  # type: ignore[no-untyped-def]
    """Return the transcoder set (per-layer transcoders, a `{layer: transcoder}` mapping, or a
    cross-layer transcoder) saved in a folder, at `hf://ORG/REPO[/SUBPATH]`, named by a preset
    (`sparsecircuits.dictionaries.presets.PRESETS`), or "embedded"'s shipped transcoders."""
    from sparsecircuits.dictionaries import load_transcoders as _load_transcoders

    return _load_transcoders(name_or_path, **kwargs)
