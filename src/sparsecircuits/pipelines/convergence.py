"""Transcoders vs SAEs at matched L0, each trained until its spliced loss stops improving.

The paper's central claim (Dunefsky et al. 2024, §3) is that a transcoder replacing an MLP costs
no more next-token loss than an SAE reconstructing that MLP's output at the same sparsity. This
pipeline tests it at convergence: TopK transcoders (`mlp.hook_in → mlp.hook_out`) and TopK SAEs
(`mlp.hook_out → mlp.hook_out`, the very tensor the transcoder writes) for each k, layer and seed,
trained on doubling token budgets and evaluated after each on a fixed held-out token set.

The stopping rule (`converged_budget`): a configuration (layer, kind, k) has converged at the
first budget whose seed-mean *spliced CE* is less than `tolerance` (1 %) below the previous
budget's, relative to it; a transcoder and its SAE (same layer and k) stop training together
once both have converged, and are compared there. Criterion "ce_increase" applies the same
rule to the CE increase (spliced CE − clean CE) instead: far stricter, since the increase is a
small part of the spliced CE.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsecircuits.config import to_dict, torch_dtype
from sparsecircuits.data import ActivationStore, ActivationStoreConfig
from sparsecircuits.dictionaries import SparseCoder
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.evaluation import evaluate_dictionaries
from sparsecircuits.models import ModelAdapter, load_model
from sparsecircuits.pipelines.train import (
    DictionarySpec,
    TrainingContexts,
    build_dictionaries,
    context_stream,
    eval_batches,
    store_hooks,
)
from sparsecircuits.training import TrainConfig, Trainer
from sparsecircuits.training.checkpoints import (
    latest_checkpoint,
    list_checkpoints,
    settings_difference,
)

CRITERIA = ("ce_increase", "ce")
KINDS = ("transcoder", "sae")
RESULTS_FILE = "results.jsonl"
# Settings that decide only where configurations stop training, never how they train.
STOPPING_SETTINGS = ("max_budget", "tolerance", "criterion")
# The metrics each evaluation row keeps (beside the configuration and budget).
ROW_METRICS = (
    "l0",
    "fvu",
    "dead_frac",
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_increase",
    "ce_loss_recovered",
    "ce_loss_zero_ablated",
    "kl_div",
)


@dataclass
class ConvergenceConfig:
    """A transcoder-vs-SAE convergence sweep. `layers` None: every layer of the model. Budgets
    are `first_budget · 2^i` tokens up to `max_budget`; each seed is its own activation stream
    (shuffle order) and initialisation. `dataset` trains, the first `eval_contexts` contexts of
    `eval_dataset` evaluate (skipped in training when the two are the same)."""

    model: str = "embedded"
    dataset: str = "runs/embedded/corpus_train.jsonl"
    eval_dataset: str = "embedded"
    out: str = "out/tc-vs-sae"
    device: str | None = None
    dtype: str = "float32"
    layers: list[int] | None = None
    ks: list[int] = field(default_factory=lambda: [16, 32, 64])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    d_sae: int = 2048
    context_size: int = 128
    contexts_per_forward: int = 32
    buffer_tokens: int = 65536
    eval_contexts: int = 64
    first_budget: int = 2**18
    max_budget: int = 2**24
    tolerance: float = 0.01
    criterion: str = "ce"
    batch_tokens: int = 4096
    lr: float = 3e-3
    warmup_steps: int = 20

    def __post_init__(self) -> None:
        """Raise `SparseCircuitsError` naming the first setting out of range."""
        checks = (
            ("ks", bool(self.ks) and all(k >= 1 for k in self.ks), "one or more k of at least 1"),
            ("seeds", len(set(self.seeds)) == len(self.seeds) >= 1, "one or more distinct seeds"),
            ("d_sae", self.d_sae >= max(self.ks or [1]), "at least the largest k"),
            ("first_budget", self.first_budget >= self.batch_tokens, "at least batch_tokens"),
            ("max_budget", self.max_budget >= self.first_budget, "at least first_budget"),
            ("tolerance", 0 < self.tolerance < 1, "a fraction in (0, 1)"),
            ("criterion", self.criterion in CRITERIA, f"one of {', '.join(CRITERIA)}"),
            ("eval_contexts", self.eval_contexts >= 1, "at least 1"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "a positive number"),
            ("batch_tokens", self.batch_tokens >= 1, "at least 1"),
        )
        for name, ok, wanted in checks:
            if not ok:
                raise SparseCircuitsError(
                    f"{name}={getattr(self, name)!r} is out of range; it must be {wanted}"
                )

    def budgets(self) -> list[int]:
        """Return the token budgets evaluated: `first_budget` doubled up to `max_budget`."""
        out = [self.first_budget]
        while out[-1] * 2 <= self.max_budget:
            out.append(out[-1] * 2)
        return out

    def train_config(self) -> TrainConfig:
        """Adam at `lr` after a linear warmup, then constant: a state at any budget is the same
        as a run stopped there, so one run gives every budget. `total_tokens` is the first budget;
        `SeedRun.train_to` moves it to each budget in turn. Checkpoints come from the sweep."""
        return TrainConfig(
            total_tokens=self.first_budget,
            batch_tokens=self.batch_tokens,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            decay="constant",
            checkpoint_every=0,
            checkpoint_minutes=0,
            keep_checkpoints=1,
        )


def grid_specs(cfg: ConvergenceConfig, n_layers: int) -> list[DictionarySpec]:
    """Return one TopK spec per (layer, kind, k): transcoders read `mlp.hook_in`, SAEs
    reconstruct `mlp.hook_out`, and both write `mlp.hook_out`, so they splice in the same place."""
    layers = list(range(n_layers)) if cfg.layers is None else cfg.layers
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise SparseCircuitsError(
            f"layers {bad or layers} are out of range for a model of {n_layers} layers; use 0..{n_layers - 1}"
        )
    specs = []
    for layer in layers:
        for k in cfg.ks:
            for kind in KINDS:
                hook_out = f"blocks.{layer}.mlp.hook_out"
                hook_in = f"blocks.{layer}.mlp.hook_in" if kind == "transcoder" else hook_out
                specs.append(
                    DictionarySpec(
                        kind=kind,
                        architecture="topk",
                        layer=layer,
                        d_sae=cfg.d_sae,
                        k=k,
                        hook_in=hook_in,
                        hook_out=hook_out,
                        name=f"{kind}-L{layer}-k{k}",  # e.g. transcoder-L2-k32
                    )
                )
    return specs


def relative_improvement(previous: float, current: float) -> float:
    """`(previous − current) / previous`: the fraction of `previous` one doubling removed
    (negative when it got worse); 0 when `previous` is not positive (nothing left to remove)."""
    return (previous - current) / previous if previous > 0 else 0.0


def converged_budget(points: Iterable[tuple[int, float]], tolerance: float) -> int | None:
    """Return the first budget whose value (a loss, lower is better) improved on the previous
    budget's by less than `tolerance`, relative to it; None if every doubling improved more.
    `points` are `(budget, value)`; they are taken in budget order."""
    ordered = sorted(points)
    for (_, previous), (budget, current) in zip(ordered, ordered[1:], strict=False):
        if relative_improvement(previous, current) < tolerance:
            return budget
    return None


def seed_means(rows: list[dict[str, Any]], metric: str) -> dict[tuple[str, int], float]:
    """Return `{(config name, budget): mean of metric over the seeds evaluated there}`."""
    values: dict[tuple[str, int], list[float]] = defaultdict(list)
    for row in rows:
        values[(row["name"], row["budget"])].append(float(row[metric]))
    return {key: sum(v) / len(v) for key, v in values.items()}


def complete_seed_means(
    rows: list[dict[str, Any]], cfg: ConvergenceConfig
) -> dict[tuple[str, int], float]:
    """`{(config name, budget): seed-mean stopping criterion}` over the budgets every seed of
    `cfg` reached."""
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for row in rows:
        counts[(row["name"], row["budget"])] += 1
    # the loss the stopping rule watches
    metric = "ce_increase" if cfg.criterion == "ce_increase" else "ce_loss_spliced"
    means = seed_means(rows, metric)
    return {key: v for key, v in means.items() if counts[key] >= len(cfg.seeds)}


def converged_at(rows: list[dict[str, Any]], cfg: ConvergenceConfig) -> dict[str, int]:
    """Return `{config name: budget where it converged}` (`converged_budget` over the budgets
    every seed reached) for the configurations that have, from the evaluation rows so far."""
    per_config: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (name, budget), mean in complete_seed_means(rows, cfg).items():
        per_config[name].append((budget, mean))
    stops = {name: converged_budget(points, cfg.tolerance) for name, points in per_config.items()}
    return {name: stop for name, stop in stops.items() if stop is not None}


def stopped_at(rows: list[dict[str, Any]], cfg: ConvergenceConfig) -> dict[str, int]:
    """Return `{config name: budget where it stopped training}`: where it and its partner of the
    other kind (when the rows have one) have both converged (`converged_at`)."""
    own = converged_at(rows, cfg)
    names = {row["name"] for row in rows}
    # A transcoder and the SAE of its layer and k stop together, so the pair is compared at one
    # budget with neither side under-trained.
    out = {}
    for name, stop in own.items():
        partner = partner_name(name)
        if partner not in names:
            out[name] = stop
        elif partner in own:
            out[name] = max(stop, own[partner])
    return out


def partner_name(name: str) -> str | None:
    """The configuration of the other kind at the same layer and k (`transcoder-L1-k32` <->
    `sae-L1-k32`); None for a name that does not start with a kind."""
    kind, _, rest = name.partition("-")
    if kind not in KINDS or not rest:
        return None
    return f"{KINDS[1 - KINDS.index(kind)]}-{rest}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Return the evaluation rows of a results JSONL file (none when it does not exist); a row
    written twice for one (configuration, seed, budget), as after an interrupted run, counts once."""
    if not path.is_file():
        return []
    rows: dict[tuple[str, int, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[(row["name"], row["seed"], row["budget"])] = row
    return list(rows.values())


def _row(
    record: dict[str, Any], spec: DictionarySpec, seed: int, budget: int, tokens: int
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "layer": spec.layer,
        "k": spec.settings["k"],
        "d_sae": spec.d_sae,
        "seed": seed,
        "budget": budget,
        "tokens": tokens,
    }
    record = {**record, "ce_increase": record["ce_loss_spliced"] - record["ce_loss_clean"]}
    row.update({metric: float(record[metric]) for metric in ROW_METRICS})
    return row


class SeedRun:
    """One seed's stream and trainer over the configurations still training."""

    def __init__(
        self,
        adapter: ModelAdapter,
        cfg: ConvergenceConfig,
        specs: list[DictionarySpec],
        seed: int,
        active: set[str],
        quiet: bool,
    ):
        self.seed = seed
        self.specs = {spec.name: spec for spec in specs}
        # Distinct initialisation seeds across the sweep's seeds and configurations.
        built = build_dictionaries(adapter, specs, seed * len(specs))
        self.dictionaries: dict[str, SparseCoder] = {
            name: d for name, d in built.items() if name in active
        }
        store_cfg = ActivationStoreConfig(
            context_size=cfg.context_size,
            contexts_per_forward=cfg.contexts_per_forward,
            batch_tokens=cfg.batch_tokens,
            buffer_tokens=cfg.buffer_tokens,
            seed=seed,
        )
        held_out = cfg.eval_contexts if cfg.dataset == cfg.eval_dataset else 0
        contexts = TrainingContexts(
            context_stream(adapter, cfg.dataset, cfg.context_size), held_out, epochs=1000
        )
        store = ActivationStore(adapter, contexts, store_hooks(self.dictionaries), store_cfg)
        train_cfg = cfg.train_config()
        train_cfg.seed = seed
        train_cfg.quiet = quiet
        # The run's identity for checkpoints: the whole grid, not the configurations left, and
        # not the stopping settings: they decide which configurations go on, not how any is
        # trained (the learning rate is constant), so a sweep can be extended or its rule changed.
        run_record = {**to_dict(cfg), "seed_run": seed, "out": None, "device": None}
        for key in STOPPING_SETTINGS:
            run_record.pop(key)
        self.out = Path(cfg.out) / f"seed{seed}"
        self.trainer = Trainer(
            store, self.dictionaries, train_cfg, out_dir=self.out, run_config=run_record
        )
        found = latest_checkpoint(self.out, self.trainer.fingerprint)
        # Said when the seed starts again although checkpoints of other settings are there (kept).
        self.restart_note: str | None = None
        if found is not None:
            self.trainer.load_checkpoint(found)
        elif others := list_checkpoints(self.out):
            difference = settings_difference(others[-1].settings, self.trainer.settings)
            self.restart_note = (
                f"seed {seed}: the checkpoints in {self.out} were written with other settings "
                f"({difference}); training from the start (they are kept)"
            )

    def drop(self, names: Iterable[str]) -> None:
        """Stop training the named configurations (they converged)."""
        for name in names:
            if name in self.dictionaries:
                for table in (
                    self.trainer.dictionaries,
                    self.trainer.optimizers,
                    self.trainer.base_lrs,
                    self.trainer.tokens_since_fired,
                ):
                    table.pop(name, None)

    def train_to(self, tokens: int) -> None:
        """Train every remaining configuration up to `tokens` tokens (a checkpoint at the end)."""
        # The horizon is the budget trained to (a constant learning rate does not depend on it).
        self.trainer.cfg.total_tokens = tokens
        if self.trainer.step < self.trainer.cfg.total_steps and self.dictionaries:
            self.trainer.train()


# Settings that may change between a sweep and its continuation.
FREE_SETTINGS = ("out", "device", *STOPPING_SETTINGS)


def _check_same_sweep(path: Path, cfg: ConvergenceConfig, rows: list[dict[str, Any]]) -> None:
    """Raise when `path` (a sweep's config.json) holds results of a sweep with other settings."""
    if not rows or not path.is_file():
        return
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in FREE_SETTINGS}
    new = {k: v for k, v in to_dict(cfg).items() if k not in FREE_SETTINGS}
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        raise SparseCircuitsError(
            f"{path.parent} holds results of a sweep with other settings ({', '.join(differ)}); "
            "use the same settings to continue it, another --out, or --overwrite"
        )


def _check_not_resumed_past_stop(
    rows: list[dict[str, Any]], active: list[str], previous: int | None
) -> None:
    """Raise when a configuration the rows show stopped before `previous` (the budget before the
    one about to be trained) would train again: its state was not kept past its stop, as happens
    when a sweep is continued with a stricter --tolerance or another --criterion."""
    if previous is None:
        return
    last: dict[str, int] = {}
    for row in rows:
        last[row["name"]] = max(last.get(row["name"], 0), int(row["budget"]))
    behind = sorted(name for name in active if last.get(name, previous) < previous)
    if behind:
        raise SparseCircuitsError(
            f"{', '.join(behind)} stopped training at "
            f"{min(last[name] for name in behind):,} tokens under this sweep's earlier stopping "
            "settings and would train further under these; their state was not kept past the "
            "stop, so continue with the earlier --tolerance/--criterion, or apply these to the "
            "existing rows with --report-only"
        )


def run_convergence(
    cfg: ConvergenceConfig, quiet: bool = False, log: Any = print
) -> list[dict[str, Any]]:
    """Run (or resume) the sweep: for each budget, train each seed's remaining configurations to
    it, evaluate them, append the rows to `cfg.out/results.jsonl`, and drop the configurations
    that converged. Rows and per-seed checkpoints already in `cfg.out` are continued from.
    Return every evaluation row."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS_FILE
    rows = read_rows(results)
    adapter = load_model(cfg.model, device=cfg.device, dtype=torch_dtype(cfg.dtype))
    specs = grid_specs(cfg, adapter.n_layers)
    names = [spec.name for spec in specs if spec.name is not None]
    _check_same_sweep(out / "config.json", cfg, rows)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    batches = eval_batches(adapter, cfg.eval_dataset, cfg.context_size, cfg.eval_contexts)
    done = {(r["name"], r["seed"], r["budget"]) for r in rows}
    runs: dict[int, SeedRun] = {}
    budgets = cfg.budgets()
    for previous, budget in zip([None, *budgets], budgets, strict=False):
        stopped = {name for name, at in stopped_at(rows, cfg).items() if at < budget}
        active = [name for name in names if name not in stopped]
        if not active:
            break
        _check_not_resumed_past_stop(rows, active, previous)
        for seed in cfg.seeds:
            if all((name, seed, budget) in done for name in active):
                continue
            if seed not in runs:
                runs[seed] = SeedRun(adapter, cfg, specs, seed, set(active), quiet)
                if runs[seed].restart_note:
                    log(runs[seed].restart_note)
            run = runs[seed]
            run.drop(stopped)
            run.train_to(budget)
            records = evaluate_dictionaries(adapter, run.dictionaries, batches)
            tokens = run.trainer.tokens_seen
            new = [_row(rec, run.specs[rec["name"]], seed, budget, tokens) for rec in records]
            with open(results, "a") as fh:
                for row in new:
                    fh.write(json.dumps(row) + "\n")
            rows += new
            done |= {(r["name"], seed, budget) for r in new}
            log(f"seed {seed}: {len(new)} configurations evaluated at {budget:,} tokens")
        newly = [name for name, at in stopped_at(rows, cfg).items() if at == budget]
        if newly:
            log(f"converged at {budget:,} tokens: {', '.join(sorted(newly))}")
    return rows


def iter_configs(rows: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yield `(config name, its rows)` in (layer, k, kind) order."""
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_name[row["name"]].append(row)
    for name in sorted(by_name, key=lambda n: _order(by_name[n][0])):
        yield name, by_name[name]


def _order(row: dict[str, Any]) -> tuple[int, int, int]:
    return row["layer"], row["k"], KINDS.index(row["kind"])
