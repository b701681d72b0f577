"""load_model: the embedded model, a local HF folder, or a hub model (cached) -> ModelAdapter."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from sparsecircuits.cpu import warn_if_slow_bf16
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.hub import is_hub_ref, model_folder, parse_hub_id
from sparsecircuits.models.adapter import ModelAdapter
from sparsecircuits.models.architectures import spec_for_model_type
from sparsecircuits.models.hooks import ATTN_IMPLEMENTATION, register_attention

EMBEDDED = "embedded"
_MODEL_FILES = ("config.json", "model.safetensors")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return `device` as a torch.device; None means cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise SparseCircuitsError(
            f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SparseCircuitsError(
            "device 'cuda' was asked for but CUDA is not available; use device='cpu'"
        )
    return resolved


def embedded_model_dir() -> Path:
    """Return the folder of the shipped model; raise SparseCircuitsError if it is not installed."""
    try:
        module = importlib.import_module("sparsecircuits.models.embedded")
        folder = Path(module.embedded_dir())
    except (ImportError, AttributeError):
        raise SparseCircuitsError(
            "the embedded model is not installed in this package; pass a local model directory instead"
        ) from None
    missing = [name for name in _MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise SparseCircuitsError(
            f"the embedded model folder {folder} lacks {', '.join(missing)}; reinstall sparsecircuits "
            "or pass a local model directory"
        )
    return folder


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def load_model(
    name_or_path: str | Path = EMBEDDED,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> ModelAdapter:
    """Load a causal LM and return its ModelAdapter (eval mode, parameters frozen).

    `name_or_path`: "embedded" (the shipped model), a local folder written by
    `save_pretrained`, a Hugging Face hub id or `hf://ORG/REPO[/SUBPATH][@REVISION]` (only
    its config, tokenizer and safetensors files are fetched into the hub cache; offline, the
    cache must hold them). `device`: None means cuda when available, else cpu. `dtype`:
    parameter dtype.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    source: Path
    if name == EMBEDDED:
        source = embedded_model_dir()
    elif is_hub_ref(name):
        source = model_folder(name)
    elif Path(name).expanduser().is_dir():
        source = Path(name).expanduser()
        if not (source / "config.json").is_file():
            raise SparseCircuitsError(
                f"{source} has no config.json; pass a folder written by save_pretrained"
            )
    elif _looks_like_path(name) or Path(name).exists():
        raise SparseCircuitsError(
            f"model directory {name} does not exist; pass an existing folder or a hub id"
        )
    else:
        source = model_folder(parse_hub_id(name))
    target = resolve_device(device)
    warn_if_slow_bf16(f"model {name}", dtype, target)

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from None
    spec_for_model_type(config.model_type)  # unsupported architecture: fail before loading weights

    register_attention()
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            local_files_only=True,
            dtype=dtype,
            attn_implementation=ATTN_IMPLEMENTATION,
        )
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise _load_error(source, exc) from None
    model.to(target)
    return ModelAdapter(model, tokenizer, name=name)


def _load_error(source: Path, exc: Exception) -> SparseCircuitsError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SparseCircuitsError(f"could not load the model in {source}: {first_line}")
