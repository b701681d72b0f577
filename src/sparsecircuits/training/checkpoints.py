"""Which run a checkpoint belongs to: its settings, their fingerprint, and the rules built on them.

Every checkpoint folder holds `run.json`: `{fingerprint, settings, step, saved_at}`. The settings
are everything that shapes training (model, data, dictionaries, seed, learning rate, schedule,
batch...; not the output folder, device, logging or checkpoint cadence) and the fingerprint is
their SHA-256. A resume continues only a checkpoint with this run's fingerprint; clean-up only
removes this run's own older checkpoints, keeping the most recently written; a fresh run refuses
a folder that holds another run's checkpoints unless told to replace them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsecircuits.errors import SparseCircuitsError

CHECKPOINT_PREFIX = "step_"
RUN_FILE = "run.json"
# TrainConfig keys that do not change the weights a run produces
CADENCE_KEYS = frozenset(
    {"checkpoint_every", "checkpoint_minutes", "keep_checkpoints", "log_every", "quiet"}
    | {"wandb_project"}
)
# RunConfig keys that do not change the weights (`train` is replaced by the resolved TrainConfig;
# `prefetch` only moves the harvest to a background thread)
PLACE_KEYS = frozenset({"out", "device", "train", "prefetch"})


def run_settings(train_config: dict[str, Any], run_config: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape training: `{"run": run_config less PLACE_KEYS, "train":
    train_config less CADENCE_KEYS}` (both plain JSON-ready mappings)."""
    return {
        "run": {k: v for k, v in run_config.items() if k not in PLACE_KEYS},
        "train": {k: v for k, v in train_config.items() if k not in CADENCE_KEYS},
    }


def fingerprint(settings: dict[str, Any]) -> str:
    """SHA-256 (hex) of `settings` as canonical JSON."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint folder and what its `run.json` says (None: it has none)."""

    path: Path
    step: int
    fingerprint: str | None
    settings: dict[str, Any] | None
    saved_at: float


def run_record(fp: str, settings: dict[str, Any], step: int) -> str:
    """The JSON text of a checkpoint's `run.json`."""
    record = {"fingerprint": fp, "settings": settings, "step": step, "saved_at": time.time()}
    return json.dumps(record, indent=1, default=str)


def read_run_record(folder: Path) -> dict[str, Any]:
    """The `run.json` of checkpoint `folder` ({} when it has none or it is unreadable)."""
    try:
        return json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def list_checkpoints(out_dir: str | Path) -> list[CheckpointInfo]:
    """Every complete `step_*` checkpoint under `out_dir/checkpoints`, lowest step first.

    Folders being written are hidden (`.step_*.tmp`) and so never listed."""
    found = []
    for path in sorted((Path(out_dir) / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")):
        if not (path / "trainer_state.json").is_file():
            continue
        record = read_run_record(path)
        try:
            step = int(path.name[len(CHECKPOINT_PREFIX) :])
        except ValueError:
            continue
        found.append(
            CheckpointInfo(
                path,
                step,
                record.get("fingerprint"),
                record.get("settings"),
                float(record.get("saved_at", path.stat().st_mtime)),
            )
        )
    return found


def latest_checkpoint(out_dir: str | Path, fp: str | None = None) -> Path | None:
    """The furthest (highest-step) complete checkpoint under `out_dir/checkpoints`, of the run with
    fingerprint `fp` when given; None when there is none."""
    matching = [c for c in list_checkpoints(out_dir) if fp is None or c.fingerprint == fp]
    if not matching:
        return None
    return max(matching, key=lambda c: (c.step, c.saved_at)).path


def prune_checkpoints(out_dir: Path, fp: str, keep: int) -> None:
    """Delete this run's (`fp`) checkpoints but the `keep` (at least 1) most recently written;
    other runs' checkpoints are left alone."""
    own = [c for c in list_checkpoints(out_dir) if c.fingerprint == fp]
    own.sort(key=lambda c: c.saved_at, reverse=True)
    for old in own[max(1, keep) :]:
        shutil.rmtree(old.path, ignore_errors=True)


def settings_difference(old: dict[str, Any] | None, new: dict[str, Any], limit: int = 3) -> str:
    """A short `key: old there, new here` list of the settings that differ (at most `limit`)."""
    if old is None:
        return "it records no run settings"
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    parts = [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more if parts else "its fingerprint differs"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): tree}


def checkpoint_to_resume(out_dir: Path, fp: str, settings: dict[str, Any]) -> Path:
    """The checkpoint `--resume` continues: the furthest one of this run. Raise
    `SparseCircuitsError` when `out_dir` holds none, or only other runs' (saying what differs)."""
    found = latest_checkpoint(out_dir, fp)
    if found is not None:
        return found
    others = list_checkpoints(out_dir)
    if not others:
        raise SparseCircuitsError(f"--resume given but {out_dir}/checkpoints holds no checkpoint")
    newest = max(others, key=lambda c: c.saved_at)
    raise SparseCircuitsError(
        f"--resume: the checkpoints in {out_dir}/checkpoints belong to a run with other settings "
        f"({settings_difference(newest.settings, settings)}); resume with that run's settings, "
        "or start afresh with --overwrite"
    )


def claim_folder(out_dir: Path, fp: str, settings: dict[str, Any], overwrite: bool) -> None:
    """Before a fresh (not resumed) run writes `out_dir`: with `overwrite`, delete the checkpoints
    and training log there; else raise `SparseCircuitsError` when it holds another run's
    checkpoints. Checkpoints of this very run (same settings) may stay: they are states of it."""
    if overwrite:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        (out_dir / "train_log.jsonl").unlink(missing_ok=True)
        return
    others = [c for c in list_checkpoints(out_dir) if c.fingerprint != fp]
    if others:
        newest = max(others, key=lambda c: c.saved_at)
        raise SparseCircuitsError(
            f"{out_dir} holds checkpoints of another run ({settings_difference(newest.settings, settings)}); "
            "continue that run with its settings and --resume, pick another --out, "
            "or replace them with --overwrite"
        )
