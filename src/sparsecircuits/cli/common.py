"""Argument helpers shared by subcommands: config files, flag overrides, output folders."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from sparsecircuits.config import from_dict, read_config_file
from sparsecircuits.dictionaries.config import KINDS
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.pipelines import RunConfig

C = TypeVar("C")

# The flags that override a `RunConfig`: (flag, the config it sets: "run" for `RunConfig`,
# "train" for its `TrainConfig`, "dictionary" for every `DictionarySpec`; the key there;
# argparse keywords, `type` the key's field type).
RUN_FLAGS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    (
        "--model",
        "run",
        "model",
        {"help": 'hub id, hf://ORG/REPO[/SUBPATH], local model folder, or "embedded" (default)'},
    ),
    (
        "--dataset",
        "run",
        "dataset",
        {"help": '"embedded", a .txt/.jsonl/.parquet file or folder, or hf:NAME[:split]'},
    ),
    ("--out", "run", "out", {"help": "output folder (default {default_out})"}),
    ("--device", "run", "device", {"help": "cpu, cuda, cuda:1 ... (default: cuda if available)"}),
    ("--dtype", "run", "dtype", {"choices": ["float32", "bfloat16", "float16"]}),
    ("--context-size", "run", "context_size", {"type": int}),
    (
        "--kind",
        "dictionary",
        "kind",
        {
            "choices": list(KINDS),
            "help": "one dictionary's kind (clt: a cross-layer transcoder over layers 0..n_layers-1)",
        },
    ),
    ("--architecture", "dictionary", "architecture", {"help": "activation: topk, relu, ..."}),
    ("--layer", "dictionary", "layer", {"type": int}),
    (
        "--n-layers",
        "dictionary",
        "n_layers",
        {"type": int, "help": "layers a cross-layer transcoder spans (default: all)"},
    ),
    ("--d-sae", "dictionary", "d_sae", {"type": int}),
    ("--k", "dictionary", "k", {"type": int}),
    ("--l1", "dictionary", "l1_coefficient", {"type": float, "help": "L1 coefficient (relu)"}),
    ("--tokens", "train", "total_tokens", {"type": int, "help": "training tokens"}),
    ("--batch-tokens", "train", "batch_tokens", {"type": int}),
    ("--lr", "train", "lr", {"type": float}),
    (
        "--checkpoint-every",
        "train",
        "checkpoint_every",
        {"type": int, "help": "steps between checkpoints (default 0: by time only)"},
    ),
    (
        "--checkpoint-minutes",
        "train",
        "checkpoint_minutes",
        {"type": float, "help": "minutes between checkpoints (default 10; 0: off)"},
    ),
    ("--seed", "run", "seed", {"type": int}),
    (
        "--no-prefetch",
        "run",
        "prefetch",
        {
            "action": "store_const",
            "const": False,
            "help": "harvest each shuffle-buffer fill between steps, not in a background thread "
            "while training (halves the buffer memory; the same batches)",
        },
    ),
)


def add_run_arguments(p: argparse.ArgumentParser, *, default_out: str) -> None:
    """Add `--config`, the flags of `RUN_FLAGS`, `--overwrite` and `--quiet`."""
    p.add_argument("--config", help="YAML or JSON file with RunConfig fields (flags override it)")
    for flag, section, key, kwargs in RUN_FLAGS:
        kwargs = dict(kwargs)
        if "help" in kwargs:
            kwargs["help"] = kwargs["help"].format(default_out=default_out)
        if "choices" not in kwargs:  # the flag's own name in --help, not the dest
            kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        p.add_argument(flag, dest=f"{section}.{key}", **kwargs)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even though --out holds another run's checkpoints (deletes them)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_config_from_args(
    args: argparse.Namespace, *, default_out: str, base: dict[str, Any] | None = None
) -> RunConfig:
    """Return the `RunConfig` from `base`, then `--config`, then flags (later wins)."""
    data: dict[str, Any] = dict(base or {})
    if args.config:
        data.update(read_config_file(args.config))
    given: dict[str, dict[str, Any]] = {"run": {}, "train": {}, "dictionary": {}}
    for _, section, key, _ in RUN_FLAGS:
        value = getattr(args, f"{section}.{key}")
        if value is not None:
            given[section][key] = value
    data.update(given["run"])
    data.setdefault("out", default_out)
    data["train"] = {**data.get("train", {}), **given["train"]}
    if given["dictionary"]:
        dicts = data.get("dictionaries") or [{}]
        data["dictionaries"] = [{**d, **given["dictionary"]} for d in dicts]
    cfg = from_dict(RunConfig, data, where=args.config or "flags")
    check_out_folder(cfg.out)
    return cfg


def config_from_args(args: argparse.Namespace, config_class: type[C], **given: Any) -> C:
    """Return the `config_class` instance (a dataclass) of the flags named like its fields (a flag
    left at None keeps the field's default), with `given` values over them."""
    fields = dataclasses.fields(config_class)  # type: ignore[arg-type]  # C is a dataclass
    values = {f.name: getattr(args, f.name, None) for f in fields}
    return config_class(**{k: v for k, v in values.items() if v is not None} | given)


def at_least(least: int) -> Any:
    """An argparse `type`: an integer of at least `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give {least} or more")
        return value

    return parse


def port_number(text: str) -> int:
    """An argparse `type`: a TCP port, 1..65535."""
    value = at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is out of range; a port is 1..65535")
    return value


def check_prompt(text: str, flag: str = "the prompt") -> str:
    """Return `text`; raise `SparseCircuitsError` when it is blank or holds a control character
    (other than tab and newline), which tokenizers pass through as unreadable tokens."""
    if not text.strip():
        raise SparseCircuitsError(f"{flag} is empty; give the text to trace")
    for i, char in enumerate(text):
        if unicodedata.category(char) == "Cc" and char not in "\t\n\r":
            raise SparseCircuitsError(
                f"{flag} holds the control character U+{ord(char):04X} at position {i}; remove it"
            )
    return text


def check_out_folder(out: str | Path) -> Path:
    """Return `out` as a path; raise `SparseCircuitsError` when it is a file, lies under a file,
    or would be created in (or is) a folder this process cannot write to (found by creating and
    removing an empty folder there; nothing else is written)."""
    path = Path(out)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"lies under the file {existing}"
        raise SparseCircuitsError(f"--out {path} {where}; pass a folder")
    try:  # a probe, not os.access: it also sees read-only file systems
        os.rmdir(tempfile.mkdtemp(prefix=".sparsecircuits-probe-", dir=existing))
    except OSError as exc:
        raise SparseCircuitsError(
            f"--out {path}: cannot write in {existing} ({exc.strerror}); pass a folder you can write to"
        ) from None
    return path


def add_overwrite_argument(p: argparse.ArgumentParser) -> None:
    """Add `--overwrite`, which lets `prepare_out` replace an earlier run's results."""
    p.add_argument(
        "--overwrite", action="store_true", help="replace the results an earlier run left in --out"
    )


def prepare_out(out: str | Path, writes: Iterable[str], overwrite: bool) -> Path:
    """Return `out` as a path once it is a writable folder (see `check_out_folder`) holding none
    of the files `writes` names, unless `overwrite`; never writes anything."""
    path = check_out_folder(out)
    earlier = [name for name in writes if (path / name).exists()]
    if earlier and not overwrite:
        raise SparseCircuitsError(
            f"{path} already holds {', '.join(earlier)} from an earlier run; pass another --out, "
            "or --overwrite to replace them"
        )
    return path
