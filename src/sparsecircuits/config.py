"""Config dataclasses from YAML/JSON mappings, with unknown keys rejected."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
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
    check_types(cls, mapping, where)
    return cls(**mapping)


# The field types `check_types` checks, by the name it gives them in its error.
_PLAIN_TYPES = {int: "an integer", float: "a number", str: "text", bool: "true or false"}


def check_types(cls: type, mapping: dict[str, Any], where: str) -> None:
    """Raise `SparseCircuitsError` naming the first key of `mapping` whose value does not have
    the type of `cls`'s field of that name (int, float, str, bool, list, dict, or `X | None` of
    them; an int counts as a float, a bool as neither); keys that are not fields pass."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # annotations naming types only imported for type checkers
        return
    for key, value in mapping.items():
        allowed = _allowed_types(hints.get(key))
        if allowed is None or any(_is_a(value, kind) for kind in allowed):
            continue
        wanted = " or ".join(
            _PLAIN_TYPES.get(kind, "none" if kind is type(None) else f"a {kind.__name__}")
            for kind in allowed
        )
        hint = ""
        if float in allowed and isinstance(value, str):
            hint = " (YAML reads 3e-3 as text: write 0.003 or 3.0e-3)"
        raise SparseCircuitsError(f"{key} in {where} is {value!r}; it must be {wanted}{hint}")


def _allowed_types(hint: Any) -> list[type] | None:
    """The plain types a field annotation allows, or None when it is not only made of them."""
    if hint is None:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_allowed_types(arg) for arg in typing.get_args(hint)]
        if any(part is None for part in parts):
            return None
        return [kind for part in parts if part is not None for kind in part]
    kind = typing.get_origin(hint) or hint
    return [kind] if kind in (*_PLAIN_TYPES, list, dict, type(None)) else None


def _is_a(value: Any, kind: type) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


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
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SparseCircuitsError(
            f"config file {path} is not UTF-8 text; pass a .yaml or .json file"
        ) from None
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
