"""Config dataclasses from YAML/JSON mappings, with unknown keys rejected."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml

from sparsecircuits.errors import SparseCircuitsError

T = TypeVar("T")

# The dtypes a config may name, with the short spellings accepted for them.
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_ALIASES = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16"}


def dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name (`"float32"`, `"bfloat16"`, ...) of a dtype or of a config string such
    as `"bf16"` or `"torch.float16"`; raise `SparseCircuitsError` for anything else."""
    name = str(dtype).removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise SparseCircuitsError(
            f"unknown dtype {dtype!r}; use one of {', '.join([*DTYPES, *DTYPE_ALIASES])}"
        )
    return name


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The `torch.dtype` a config string (or dtype) names (see `dtype_name`)."""
    return DTYPES[dtype_name(dtype)]


def from_dict(cls: type[T], mapping: dict[str, Any], *, where: str = "config") -> T:
    """Return `cls(**mapping)`; raise `SparseCircuitsError` naming any unknown key (the keys are the
    dataclass fields, or what `cls.check_keys(mapping, where)` accepts)."""
    check_keys = getattr(cls, "check_keys", None)
    if check_keys is not None:
        check_keys(mapping, where)
    else:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(mapping) - names
        if unknown:
            raise unknown_keys_error(unknown, names, where)
    return cls(**mapping)


def unknown_keys_error(
    unknown: Iterable[str], valid: Iterable[str], where: str
) -> SparseCircuitsError:
    """The error for the keys `unknown` found in `where`, listing the `valid` ones."""
    return SparseCircuitsError(
        f"unknown key(s) {', '.join(sorted(unknown))} in {where}; valid keys: {', '.join(sorted(valid))}"
    )


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Return the mapping stored in a YAML or JSON file (empty file -> {})."""
    path = Path(path)
    if not path.is_file():
        raise SparseCircuitsError(
            f"config file {path} does not exist; pass an existing .yaml or .json file"
        )
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SparseCircuitsError(f"cannot parse config file {path}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SparseCircuitsError(f"config file {path} must hold a mapping of keys to values")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a config dataclass (its own `as_dict()` where it has one: a
    dictionary config writes its family's settings flat)."""
    as_dict = getattr(config, "as_dict", None)
    return as_dict() if as_dict is not None else dataclasses.asdict(config)
