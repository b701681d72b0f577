"""Run configs and the train/eval pipelines the CLI drives (model → store → trainer → evaluator)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsecircuits.config import from_dict, to_dict
from sparsecircuits.data import ActivationStore, ActivationStoreConfig, TokenSource, make_source
from sparsecircuits.dictionaries import (
    Dictionary,
    DictionaryConfig,
    load_dictionary,
    make_dictionary,
    save_dictionary,
)
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.evaluation import plot_frontier
from sparsecircuits.models import ModelAdapter, load_model
from sparsecircuits.training import TrainConfig, Trainer, TrainResult, latest_checkpoint

KINDS = ("transcoder", "sae", "skip_transcoder")


@dataclass
class DictionarySpec:
    """One dictionary to train. Hooks default from `kind` and `layer`.

    transcoder / skip_transcoder: `blocks.{layer}.hook_mlp_in → blocks.{layer}.hook_mlp_out`;
    sae: `blocks.{layer}.hook_mlp_out` (the same point a transcoder writes, so the two compare).
    """

    kind: str = "transcoder"
    architecture: str = "topk"
    layer: int = 0
    d_sae: int = 2048
    k: int = 32
    l1_coefficient: float = 1e-3
    hook_in: str | None = None
    hook_out: str | None = None
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved_hooks(self) -> tuple[str, str]:
        """Return `(hook_in, hook_out)` after applying the kind's defaults."""
        if self.kind not in KINDS:
            raise SparseCircuitsError(
                f"unknown dictionary kind {self.kind!r}; use one of {', '.join(KINDS)}"
            )
        if self.kind == "sae":
            hook = self.hook_in or self.hook_out or f"blocks.{self.layer}.hook_mlp_out"
            return hook, hook
        return (
            self.hook_in or f"blocks.{self.layer}.hook_mlp_in",
            self.hook_out or f"blocks.{self.layer}.hook_mlp_out",
        )

    def resolved_name(self) -> str:
        """Return the folder name: given, or `{kind}-{architecture}-L{layer}-{d_sae}-k{k}`."""
        if self.name:
            return self.name
        sparsity = f"k{self.k}" if self.architecture != "relu" else f"l1-{self.l1_coefficient:g}"
        return f"{self.kind}-{self.architecture}-L{self.layer}-{self.d_sae}-{sparsity}"


@dataclass
class RunConfig:
    """Everything a `train` run needs; saved beside its outputs as `run_config.json`."""

    model: str = "embedded"
    dataset: str = "embedded"
    out: str = "runs/train"
    device: str | None = None
    dtype: str = "float32"
    context_size: int = 128
    contexts_per_forward: int = 32
    buffer_tokens: int = 65536
    dictionaries: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    train: dict[str, Any] = field(default_factory=dict)
    eval_contexts: int = 64
    data_epochs: int = 1
    seed: int = 0

    def specs(self) -> list[DictionarySpec]:
        """Return the dictionary specs, each validated against `DictionarySpec`'s fields."""
        if not self.dictionaries:
            raise SparseCircuitsError("the config lists no dictionaries; add at least one")
        return [from_dict(DictionarySpec, d, where="dictionaries[]") for d in self.dictionaries]

    def train_config(self) -> TrainConfig:
        """Return the `TrainConfig` built from the `train` mapping (seed from the run)."""
        return from_dict(TrainConfig, {"seed": self.seed, **self.train}, where="train")


def torch_dtype(name: str) -> torch.dtype:
    """Return the torch dtype called `name` ("float32", "bfloat16", "float16")."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise SparseCircuitsError(f"unknown dtype {name!r}; use one of {', '.join(dtypes)}")
    return dtypes[name]


def build_dictionaries(
    adapter: ModelAdapter, specs: list[DictionarySpec], seed: int
) -> dict[str, Dictionary]:
    """Return `{name: Dictionary}` sized from the model's hook dimensions."""
    out: dict[str, Dictionary] = {}
    for i, spec in enumerate(specs):
        hook_in, hook_out = spec.resolved_hooks()
        name = spec.resolved_name()
        if name in out:
            raise SparseCircuitsError(
                f"two dictionaries are named {name!r}; give each a distinct name"
            )
        cfg = DictionaryConfig(
            architecture=spec.architecture,
            kind=spec.kind,
            d_in=adapter.hook_dim(hook_in),
            d_sae=spec.d_sae,
            d_out=adapter.hook_dim(hook_out),
            hook_in=hook_in,
            hook_out=hook_out,
            k=spec.k,
            l1_coefficient=spec.l1_coefficient,
            model_name=adapter.name,
            seed=seed + i,
            device=str(adapter.device),
            **spec.extra,
        )
        out[name] = make_dictionary(cfg).to(adapter.device)
    return out


def context_stream(adapter: ModelAdapter, dataset: str, context_size: int) -> TokenSource:
    """Return a re-iterable stream of packed token contexts `[context_size]` from a dataset spec."""
    return TokenSource(
        make_source(dataset), adapter.tokenizer, context_size, max_context=adapter.max_context
    )


class TrainingContexts:
    """Re-iterable contexts for training: skip the first `held_out` contexts, repeat `epochs` times.

    Re-iterable (not a one-shot iterator) so the activation store can replay it to resume.
    """

    def __init__(self, source: TokenSource, held_out: int, epochs: int = 1):
        self.source, self.held_out, self.epochs = source, held_out, epochs

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(self.epochs):
            yield from itertools.islice(iter(self.source), self.held_out, None)


def eval_batches(
    adapter: ModelAdapter, dataset: str, context_size: int, n_contexts: int, batch: int = 16
) -> list[torch.Tensor]:
    """Return `[batch, context_size]` token tensors for evaluation.

    These are the first `n_contexts` contexts of the dataset, which `train_run` skips.
    """
    contexts = []
    for ctx in context_stream(adapter, dataset, context_size):
        contexts.append(ctx)
        if len(contexts) >= n_contexts:
            break
    if not contexts:
        raise SparseCircuitsError(f"dataset {dataset!r} yielded no tokens to evaluate on")
    ids = torch.stack(contexts).to(adapter.device)
    return list(ids.split(batch))


def train_run(
    cfg: RunConfig, resume: bool = False, quiet: bool = False, adapter: ModelAdapter | None = None
) -> tuple[dict[str, Dictionary], TrainResult, ModelAdapter]:
    """Train every dictionary of `cfg` from one activation stream; save them under `cfg.out`.

    Returns the trained dictionaries, the `TrainResult` and the model adapter. Final
    dictionaries land in `cfg.out/dictionaries/<name>/` (SAELens layout); checkpoints in
    `cfg.out/checkpoints/`.
    """
    out = Path(cfg.out)
    adapter = adapter or load_model(cfg.model, device=cfg.device, dtype=torch_dtype(cfg.dtype))
    specs = cfg.specs()
    train_cfg = cfg.train_config()
    if quiet:
        train_cfg.quiet = True
    dictionaries = build_dictionaries(adapter, specs, cfg.seed)
    hooks = sorted({h for d in dictionaries.values() for h in (d.cfg.hook_in, d.cfg.hook_out)})
    store_cfg = ActivationStoreConfig(
        context_size=cfg.context_size,
        contexts_per_forward=cfg.contexts_per_forward,
        batch_tokens=train_cfg.batch_tokens,
        buffer_tokens=cfg.buffer_tokens,
        seed=cfg.seed,
    )
    # The first `eval_contexts` contexts are held out for evaluation (see `eval_batches`).
    contexts = TrainingContexts(
        context_stream(adapter, cfg.dataset, cfg.context_size), cfg.eval_contexts, cfg.data_epochs
    )
    store = ActivationStore(adapter, contexts, hooks, store_cfg)
    run_record = to_dict(cfg)
    for d in dictionaries.values():
        d.cfg.training = run_record
    trainer = Trainer(store, dictionaries, train_cfg, out_dir=out, run_config=run_record)
    if resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            raise SparseCircuitsError(f"--resume given but {out}/checkpoints holds no checkpoint")
        trainer.load_checkpoint(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.json").write_text(json.dumps(run_record, indent=2))
    result = trainer.train()
    for name, d in dictionaries.items():
        save_dictionary(d, out / "dictionaries" / name)
    return dictionaries, result, adapter


def load_dictionaries(
    paths: list[str], device: str | torch.device | None = None
) -> dict[str, Dictionary]:
    """Return `{name: Dictionary}` from dictionary folders or folders holding several of them."""
    found: dict[str, Dictionary] = {}
    for p in map(Path, paths):
        if (p / "cfg.json").is_file():
            found[p.name] = load_dictionary(p, device=device)
        elif p.is_dir() and any(p.glob("*/cfg.json")):
            for sub in sorted(p.glob("*/cfg.json")):
                found[sub.parent.name] = load_dictionary(sub.parent, device=device)
        else:
            raise SparseCircuitsError(
                f"{p} holds no saved dictionary (no cfg.json); pass a dictionary folder"
            )
    return found


def check_compatible(adapter: ModelAdapter, dictionaries: dict[str, Dictionary]) -> None:
    """Raise if a dictionary's hooks or widths do not match the model."""
    for name, d in dictionaries.items():
        for hook, dim in ((d.cfg.hook_in, d.cfg.d_in), (d.cfg.hook_out, d.cfg.d_out)):
            model_dim = adapter.hook_dim(hook)
            if model_dim != dim:
                raise SparseCircuitsError(
                    f"dictionary {name} expects width {dim} at {hook} but the model has {model_dim}; "
                    "use the model it was trained on"
                )


def write_report(out: Path, records: list[dict[str, Any]], title: str, extra_md: str = "") -> None:
    """Write `metrics.json`, `frontier.png` and `summary.md` for evaluated dictionaries."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(records, indent=2))
    plot_frontier(records, out / "frontier.png", title=title)
    lines = [
        f"# {title}",
        "",
        "| name | kind | arch | hook in → out | d_sae | L0 | FVU | CE clean | CE spliced | CE zero-abl. | CE recovered | KL |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['architecture']} | {r['hook_in']} → {r['hook_out']} | "
            f"{r['d_sae']} | {r['l0']:.1f} | {r['fvu']:.3f} | {r['ce_loss_clean']:.3f} | "
            f"{r['ce_loss_spliced']:.3f} | {r['ce_loss_zero_ablated']:.3f} | "
            f"{100 * r['ce_loss_recovered']:.1f}% | {r['kl_div']:.4f} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n\n" + extra_md)
