"""Config dataclasses from YAML/JSON mappings, with unknown keys rejected."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sparsecircuits.errors import SparseCircuitsError

T = TypeVar("T")


def from_dict(cls: type[T], mapping: dict[str, Any], *, where: str = "config") -> T:
    """Return `cls(**mapping)`; raise `SparseCircuitsError` naming any unknown key."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise SparseCircuitsError(
            f"unknown key(s) {', '.join(unknown)} in {where}; valid keys: {', '.join(sorted(names))}"
        )
    return cls(**mapping)


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
    """Return a JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)
