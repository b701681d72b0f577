"""Run configs and the training pipeline the CLI drives (model → store → trainer), with the
loaders and checks `eval` and `dashboards` use."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sparsecircuits.config import from_dict, to_dict, torch_dtype, unknown_keys_error
from sparsecircuits.data import ActivationStore, ActivationStoreConfig, TokenSource, make_source
from sparsecircuits.dictionaries import (
    DictionaryConfig,
    SparseCoder,
    load,
    make,
    save_dictionary,
)
from sparsecircuits.dictionaries.activations import ActivationParams
from sparsecircuits.dictionaries.config import (
    KINDS,
    activation_family,
    family_params,
    spans_layers,
)
from sparsecircuits.dictionaries.presets import resolve_source
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.evaluation.splice import check_splice_hooks
from sparsecircuits.files import atomic_write_text
from sparsecircuits.models import ModelAdapter, load_model
from sparsecircuits.training import TrainConfig, Trainer, TrainResult
from sparsecircuits.training.checkpoints import (
    checkpoint_to_resume,
    claim_folder,
    fingerprint,
    run_settings,
)
from sparsecircuits.training.distributed import (
    DistributedContext,
    DistributedTrainer,
    ShardedContexts,
)

# Hook templates of a transcoder (a cross-layer one uses them for every layer it covers).
TRANSCODER_HOOK_IN = "blocks.{layer}.mlp.hook_in"
TRANSCODER_HOOK_OUT = "blocks.{layer}.mlp.hook_out"


# `DictionaryConfig` keys a spec leaves to the model (widths, name) and to the run
FROM_RUN = ("d_in", "d_out", "model_name", "device", "seed", "training")


@dataclass(init=False)
class DictionarySpec:
    """One dictionary to train: a `DictionaryConfig` whose widths come from the model.

    Written flat: the fields below, and in `settings` every other `DictionaryConfig` key of this
    architecture (checked as the config checks them). The model gives `d_in`, `d_out`,
    `model_name`; the run `device` and `seed`. Hooks default from `kind` and `layer`: a transcoder
    the MLP module's own `blocks.{layer}.mlp.hook_in → mlp.hook_out`, an SAE `hook_mlp_out`, a clt
    the same templates over layers `0 .. n_layers - 1` (`n_layers` is for kind clt only; None:
    every layer).
    """

    kind: str = "transcoder"
    architecture: str = "topk"
    layer: int = 0
    d_sae: int = 2048
    hook_in: str | None = None
    hook_out: str | None = None
    name: str | None = None
    n_layers: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        """The spec's fields from `values`; the other keys go to `settings`."""
        self.check_keys(values, where="DictionarySpec")
        own = _spec_fields()
        for f in fields(self):
            if f.name in own:
                setattr(self, f.name, values.get(f.name, f.default))
        self.settings = {key: value for key, value in values.items() if key not in own}

    @classmethod
    def check_keys(cls, mapping: Mapping[str, Any], where: str) -> None:
        """Raise `SparseCircuitsError` for an unknown architecture or key in `mapping` (read from
        `where`): the keys are the spec's fields and `DictionaryConfig`'s, less `FROM_RUN`."""
        valid, accepted = DictionaryConfig.known_keys(mapping.get("architecture", cls.architecture))
        own = _spec_fields()
        unknown = set(mapping) - own - (accepted - set(FROM_RUN))
        if unknown:
            raise unknown_keys_error(unknown, own | (set(valid) - set(FROM_RUN)), where)

    def params(self) -> ActivationParams:
        """The family's settings given in this spec, defaults elsewhere (unresolved)."""
        return family_params(activation_family(self.architecture), self.settings)

    def resolved_hooks(self) -> tuple[str, str]:
        """Return `(hook_in, hook_out)` with the kind's defaults (`{layer}` templates for a
        cross-layer transcoder, which must be templates and two different hooks)."""
        if self.kind not in KINDS:
            raise SparseCircuitsError(
                f"unknown dictionary kind {self.kind!r}; use one of {', '.join(KINDS)}"
            )
        if spans_layers(self.kind):
            return self._clt_hooks()
        if self.n_layers is not None:
            raise SparseCircuitsError(
                f"n_layers is for cross-layer transcoders only (kind clt), not kind {self.kind!r}; remove it"
            )
        if self.kind == "sae":
            hook = self.hook_in or self.hook_out or f"blocks.{self.layer}.hook_mlp_out"
            return hook, hook
        return (
            self.hook_in or TRANSCODER_HOOK_IN.format(layer=self.layer),
            self.hook_out or TRANSCODER_HOOK_OUT.format(layer=self.layer),
        )

    def _clt_hooks(self) -> tuple[str, str]:
        if self.layer != 0:
            raise SparseCircuitsError(
                f"a cross-layer transcoder covers layers 0..n_layers-1 and takes no layer (got layer={self.layer}); "
                "remove layer and set n_layers"
            )
        hook_in, hook_out = self.hook_in or TRANSCODER_HOOK_IN, self.hook_out or TRANSCODER_HOOK_OUT
        for hook in (hook_in, hook_out):
            if "{layer}" not in hook:
                raise SparseCircuitsError(
                    f"a cross-layer transcoder's hooks are templates with {{layer}}, like {TRANSCODER_HOOK_IN} "
                    f"-> {TRANSCODER_HOOK_OUT}; got {hook!r}"
                )
        if hook_in == hook_out:
            raise SparseCircuitsError(
                f"a cross-layer transcoder reads one hook and writes a later one, but hook_in and hook_out "
                f"are both {hook_in!r} (an SAE's hooks); use kind sae, or set hook_out"
            )
        return hook_in, hook_out

    def resolved_n_layers(self, model_layers: int) -> int:
        """Return the layers a cross-layer transcoder spans: `n_layers`, else every layer of a
        model with `model_layers` layers; raise when out of range."""
        n_layers = self.n_layers
        if n_layers is None:
            return model_layers
        if not isinstance(n_layers, int) or not 1 <= n_layers <= model_layers:
            raise SparseCircuitsError(
                f"n_layers={n_layers!r} is out of range for this model, which has {model_layers} layers; "
                f"use 1..{model_layers} (or leave it unset for all of them)"
            )
        return n_layers

    def resolved_name(self, n_layers: int | None = None) -> str:
        """Return the folder name: given, or `{kind}-{architecture}-L{layer}-{d_sae}-{tag}` (`k32`,
        `l1-0.001`, ...); a CLT over `n_layers` (resolved, else its own) is `clt-…-L0-{N-1}-…`."""
        if self.name:
            return self.name
        layers = f"L{self.layer}"
        if spans_layers(self.kind):
            count = n_layers or self.n_layers
            layers = f"L0-{count - 1}" if count else "Lall"
        parts = [self.kind, self.architecture, layers, str(self.d_sae), self.params().tag()]
        return "-".join(part for part in parts if part)


@dataclass
class RunConfig:
    """Everything a `train` run needs; saved beside its outputs as `run_config.json`. `prefetch`:
    harvest the next shuffle-buffer fill in a background thread while training on the current
    one (the same batches; twice the buffer memory)."""

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
    prefetch: bool = True

    def __post_init__(self) -> None:
        """Raise `SparseCircuitsError` naming the first size below its minimum."""
        for name, least in (
            ("context_size", 2),
            ("contexts_per_forward", 1),
            ("buffer_tokens", 1),
            ("eval_contexts", 0),
            ("data_epochs", 1),
        ):
            if getattr(self, name) < least:
                raise SparseCircuitsError(
                    f"{name}={getattr(self, name)!r} is out of range; it must be at least {least}"
                )

    def specs(self) -> list[DictionarySpec]:
        """Return the dictionary specs, each validated against `DictionarySpec`'s fields."""
        if not self.dictionaries:
            raise SparseCircuitsError("the config lists no dictionaries; add at least one")
        return [from_dict(DictionarySpec, d, where="dictionaries[]") for d in self.dictionaries]

    def train_config(self) -> TrainConfig:
        """Return the `TrainConfig` built from the `train` mapping (seed from the run)."""
        return from_dict(TrainConfig, {"seed": self.seed, **self.train}, where="train")


def _spec_fields() -> set[str]:
    """`DictionarySpec`'s own keys (its fields but `settings`)."""
    return {f.name for f in fields(DictionarySpec)} - {"settings"}


def build_dictionaries(
    adapter: ModelAdapter, specs: list[DictionarySpec], seed: int
) -> dict[str, SparseCoder]:
    """Return `{name: dictionary}` sized from the model's hook dimensions (a cross-layer
    transcoder from layer 0's, every layer checked by `check_compatible`)."""
    out: dict[str, SparseCoder] = {}
    for i, spec in enumerate(specs):
        hook_in, hook_out = spec.resolved_hooks()
        settings = dict(spec.settings)
        n_layers = None
        if "{layer}" in hook_in:  # a template over layers 0..n_layers-1
            n_layers = settings["n_layers"] = spec.resolved_n_layers(adapter.n_layers)
        width_in, width_out = hook_in.format(layer=0), hook_out.format(layer=0)
        name = spec.resolved_name(n_layers)
        if name in out:
            raise SparseCircuitsError(
                f"two dictionaries are named {name!r}; give each a distinct name"
            )
        cfg = DictionaryConfig(
            architecture=spec.architecture,
            kind=spec.kind,
            d_in=adapter.hook_dim(width_in),
            d_sae=spec.d_sae,
            d_out=adapter.hook_dim(width_out),
            hook_in=hook_in,
            hook_out=hook_out,
            model_name=adapter.name,
            seed=seed + i,
            device=str(adapter.device),
            **settings,
        )
        dictionary = make(cfg).to(adapter.device)
        check_compatible(adapter, {name: dictionary})
        out[name] = dictionary
    return out


def store_hooks(dictionaries: Mapping[str, SparseCoder]) -> list[str]:
    """Return every hook the dictionaries read or fit (each CLT layer's hooks included), sorted."""
    return sorted({hook for d in dictionaries.values() for hook in d.hook_names()})


def context_stream(adapter: ModelAdapter, dataset: str, context_size: int) -> TokenSource:
    """Return a re-iterable stream of packed token contexts `[context_size]` from a dataset spec."""
    return TokenSource(
        make_source(dataset),
        adapter.tokenizer,
        context_size,
        max_context=adapter.max_context,
        model_config=adapter.model.config,
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
    # at least one context, even with n_contexts 0
    stream = context_stream(adapter, dataset, context_size)
    contexts = list(itertools.islice(stream, max(n_contexts, 1)))
    if not contexts:
        raise SparseCircuitsError(f"dataset {dataset!r} yielded no tokens to evaluate on")
    ids = torch.stack(contexts).to(adapter.device)
    return list(ids.split(batch))


def train_run(
    cfg: RunConfig,
    resume: bool = False,
    quiet: bool = False,
    adapter: ModelAdapter | None = None,
    context: DistributedContext | None = None,
    overwrite: bool = False,
) -> tuple[dict[str, SparseCoder], TrainResult, ModelAdapter]:
    """Train every dictionary of `cfg` from one activation stream; return them, the `TrainResult`
    and the adapter. Final dictionaries land in `cfg.out/dictionaries/<name>/`, checkpoints in
    `cfg.out/checkpoints/`. With a `DistributedContext` this process is one rank of a data-parallel
    run: it harvests its shard, trains with `DistributedTrainer`, and only rank 0 writes `cfg.out`.
    Checkpoints belong to their run (`training/checkpoints.py`): `resume` continues this run's
    furthest checkpoint and refuses other runs'; a fresh run refuses a folder holding another
    run's checkpoints unless `overwrite` (which deletes them first)."""
    if resume and overwrite:
        raise SparseCircuitsError(
            "--resume continues the checkpoints --overwrite deletes; give one"
        )
    out = Path(cfg.out)
    world = 1 if context is None else context.world_size
    is_main = context is None or context.is_main
    train_cfg = cfg.train_config()
    if quiet:
        train_cfg.quiet = True
    run_record = to_dict(cfg)
    if context is not None:
        run_record["distributed"] = {"world_size": world, "backend": context.backend}
    settings = run_settings(to_dict(train_cfg), run_record)
    resume_from = checkpoint_to_resume(out, fingerprint(settings), settings) if resume else None
    if resume_from is None and is_main:  # checked before the model loads
        claim_folder(out, fingerprint(settings), settings, overwrite)
    device = cfg.device if context is None else context.device
    adapter = adapter or load_model(cfg.model, device=device, dtype=torch_dtype(cfg.dtype))
    dictionaries = build_dictionaries(adapter, cfg.specs(), cfg.seed)
    store_cfg = ActivationStoreConfig(
        context_size=cfg.context_size,
        contexts_per_forward=max(1, math.ceil(cfg.contexts_per_forward / world)),
        batch_tokens=_local_batch_tokens(train_cfg.batch_tokens, world),
        buffer_tokens=max(1, cfg.buffer_tokens // world),
        seed=cfg.seed,
        prefetch=cfg.prefetch,
    )
    # The first `eval_contexts` contexts are held out for evaluation (see `eval_batches`).
    contexts: Iterable[torch.Tensor] = TrainingContexts(
        context_stream(adapter, cfg.dataset, cfg.context_size), cfg.eval_contexts, cfg.data_epochs
    )
    if context is not None:
        contexts = ShardedContexts(contexts, context.rank, world)
    store = ActivationStore(adapter, contexts, store_hooks(dictionaries), store_cfg)
    for d in dictionaries.values():
        d.cfg.training = run_record
    trainer = (
        Trainer(store, dictionaries, train_cfg, out_dir=out, run_config=run_record)
        if context is None
        else DistributedTrainer(
            store, dictionaries, train_cfg, context, out_dir=out, run_config=run_record
        )
    )
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
    if is_main:
        atomic_write_text(out / "run_config.json", json.dumps(run_record, indent=2))
    result = trainer.train()
    if is_main:
        for name, d in dictionaries.items():
            save_dictionary(d, out / "dictionaries" / name)
    if context is not None and context.enabled:
        dist.barrier()
    return dictionaries, result, adapter


def _local_batch_tokens(batch_tokens: int, world_size: int) -> int:
    """This rank's share of a step's `batch_tokens`; raise unless it splits evenly."""
    if batch_tokens % world_size:
        raise SparseCircuitsError(
            f"batch_tokens {batch_tokens} does not split evenly over {world_size} ranks; "
            f"use a multiple of {world_size}"
        )
    return batch_tokens // world_size


def load_dictionaries(
    paths: list[str], device: str | torch.device | None = None
) -> dict[str, SparseCoder]:
    """Return `{name: dictionary}` from dictionary folders or folders holding several of them."""
    found: dict[str, SparseCoder] = {}
    for p in map(resolve_source, paths):  # a preset or hf:// reference: its local folder
        if (p / "cfg.json").is_file():
            found[p.name] = load(p, device=device)
        elif p.is_dir() and any(p.glob("*/cfg.json")):
            for sub in sorted(p.glob("*/cfg.json")):
                found[sub.parent.name] = load(sub.parent, device=device)
        else:
            raise SparseCircuitsError(
                f"{p} holds no saved dictionary (no cfg.json); pass a dictionary folder"
            )
    return found


def check_compatible(adapter: ModelAdapter, dictionaries: Mapping[str, SparseCoder]) -> None:
    """Raise if a dictionary's hooks or widths do not match the model: every layer's hooks
    must exist with the dictionary's widths and be splicable (`check_splice_hooks`)."""
    for name, d in dictionaries.items():
        hooks_in, hooks_out = d.cfg.layer_hooks()
        if len(hooks_in) > adapter.n_layers:
            raise SparseCircuitsError(
                f"dictionary {name} is a cross-layer transcoder over {len(hooks_in)} layers but the "
                f"model has {adapter.n_layers}; use the model it was trained on"
            )
        check_splice_hooks(adapter, hooks_in, hooks_out)
        widths = [(h, d.cfg.d_in) for h in hooks_in] + [(h, d.cfg.d_out) for h in hooks_out]
        for hook, dim in widths:
            model_dim = adapter.hook_dim(hook)
            if model_dim != dim:
                raise SparseCircuitsError(
                    f"dictionary {name} expects width {dim} at {hook} but the model has "
                    f"{model_dim}; use the model it was trained on"
                )
