"""Transcoder adapters: a sparse ReLU branch beside every MLP of a frozen model.

At layer ℓ the MLP output becomes `MLP_ℓ(x) + W_dec ReLU(x W_enc + b_enc) + b_dec`, with `x` the
MLP input (after its norm). Each branch is a per-layer ReLU transcoder (`Dictionary` of kind
"transcoder") reading the MLP input hook and writing the MLP output hook, so a trained set is
saved, loaded, traced and shown like any other transcoder set. The decoder starts at zero, so
a fresh set is an exact no-op.

The branch is added with the model's own hooks (`ModelAdapter.hooks`): the input hook keeps
`x`, the output hook returns `out + branch(x)`. Backbones (Hu et al. 2026): "target" keeps the
reference (fine-tuned) model and swaps in the base model's MLP weights; "base" is the base
model unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparsecircuits.dictionaries import Dictionary, DictionaryConfig, PerLayerTranscoders, make
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import ModelAdapter
from sparsecircuits.models.hooks import HookFn

BACKBONES = ("target", "base")
_MLP_IN_SUFFIXES = ("mlp.hook_in", "hook_mlp_in")


def mlp_hooks(model: ModelAdapter, layer: int) -> tuple[str, str]:
    """Return `(MLP input hook, MLP output hook)` of `layer`, as this model names them."""
    names = set(model.hook_names())
    for suffix in _MLP_IN_SUFFIXES:
        hook_in = f"blocks.{layer}.{suffix}"
        if hook_in in names:
            return hook_in, f"blocks.{layer}.hook_mlp_out"
    raise SparseCircuitsError(f"model {model.name} has no MLP input hook at layer {layer}")


def residual_hook(layer: int) -> str:
    """The hook holding the residual stream entering block `layer` (`layer == n_layers`: after
    the last block, before the final norm). Writing it replaces everything computed before."""
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def make_adapters(
    model: ModelAdapter, d_sae: int, seed: int = 0, init_l0: float = 0.0
) -> PerLayerTranscoders:
    """Return one zero-decoder ReLU transcoder per layer of `model` (`d_sae` latents each).

    Init as in the paper: `W_enc ~ U(±1/sqrt(d_model))`, `b_enc = 0`, `W_dec = 0`, `b_dec = 0`.
    `init_l0 > 0` is stored in each config; `init_from_inputs` then lowers `b_enc` so that about
    that many features per layer fire at the start.
    """
    if d_sae < 1:
        raise SparseCircuitsError(f"d_sae must be >= 1, got {d_sae}")
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(model.d_model)
    adapters: dict[int, Dictionary] = {}
    for layer in range(model.n_layers):
        hook_in, hook_out = mlp_hooks(model, layer)
        cfg = DictionaryConfig(
            architecture="relu",
            kind="transcoder",
            d_in=model.d_model,
            d_sae=d_sae,
            d_out=model.d_model,
            hook_in=hook_in,
            hook_out=hook_out,
            model_name=model.name,
            device=str(model.device),
            seed=seed + layer,
            decoder_norm="free",
            init_l0=init_l0,
        )
        dictionary = make(cfg)
        assert isinstance(dictionary, Dictionary)
        with torch.no_grad():
            w_enc = torch.rand(model.d_model, d_sae, generator=generator) * 2 * bound - bound
            dictionary.W_enc.copy_(w_enc)
            dictionary.W_dec.zero_()
            dictionary.b_enc.zero_()
            dictionary.b_dec.zero_()
        adapters[layer] = dictionary
    return PerLayerTranscoders(adapters)


@torch.no_grad()
def init_from_inputs(model: ModelAdapter, adapters: PerLayerTranscoders, input_ids: Tensor) -> None:
    """Let each adapter's family set its starting point from the MLP inputs of `input_ids`
    (ReLU with `init_l0 > 0`: the encoder bias; the decoder stays zero, so still a no-op)."""
    hooks = [adapters.hook_in(layer) for layer in adapters.layers]
    _, cache = model.run_with_cache(input_ids, hooks)
    for layer in adapters.layers:
        dictionary = adapters[layer]
        x = cache[dictionary.cfg.hook_in].flatten(0, -2).to(dictionary.W_dec.dtype)
        dictionary.activation.init_from_data(dictionary, x - dictionary.b_in)


@dataclass
class AdapterRun:
    """What one forward with adapters recorded: `acts[layer]` feature activations `[b, p, d_sae]`
    (graph-connected; `retain_grad()` them before backward to read their gradients)."""

    acts: dict[int, Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def attached(
    model: ModelAdapter,
    adapters: PerLayerTranscoders,
    ablate: Mapping[int, Tensor] | None = None,
) -> Iterator[AdapterRun]:
    """Context manager: while active, each adapter's output is added to its MLP output.

    `ablate[layer]` is a bool mask `[d_sae]` of features held at zero. Yields the `AdapterRun`
    that each forward refills.
    """
    run = AdapterRun()
    kept: dict[int, Tensor] = {}
    hooks: dict[str, HookFn] = {}

    def reader(layer: int) -> HookFn:
        def read(x: Tensor) -> None:
            kept[layer] = x

        return read

    def adder(layer: int, d: Dictionary, keep: Tensor | None) -> HookFn:
        def add(out: Tensor) -> Tensor:
            acts = d.encode(kept.pop(layer).to(d.W_dec.dtype))
            if keep is not None:
                acts = acts * keep.to(acts.device, acts.dtype)
            run.acts[layer] = acts
            return out + d.decode(acts).to(out.dtype)

        return add

    for layer in adapters.layers:
        dictionary = adapters[layer]
        keep = None if ablate is None or layer not in ablate else ~ablate[layer]
        hooks[dictionary.cfg.hook_in] = reader(layer)
        hooks[dictionary.cfg.hook_out] = adder(layer, dictionary, keep)
    with model.hooks(hooks):
        yield run


@contextlib.contextmanager
def residual_from(model: ModelAdapter, layer: int, resid: Tensor) -> Iterator[None]:
    """Context manager: the residual entering block `layer` is replaced by `resid [b, p, d]`."""
    with model.hooks({residual_hook(layer): lambda _: resid}):
        yield


def check_pair(base: ModelAdapter, reference: ModelAdapter) -> None:
    """Raise `SparseCircuitsError` unless both models have the same family and shapes."""
    shape = ("family", "n_layers", "d_model", "n_heads", "d_mlp", "vocab_size")
    differ = [a for a in shape if getattr(base, a) != getattr(reference, a)]
    if differ:
        raise SparseCircuitsError(
            f"base and reference models differ in {', '.join(differ)}; adapters diff two "
            "checkpoints of one architecture"
        )


def build_backbone(base: ModelAdapter, reference: ModelAdapter, backbone: str) -> ModelAdapter:
    """Return the frozen model the adapters are added to.

    "target": a copy of `reference` whose MLP weights are the base model's; "base": `base`.
    """
    if backbone not in BACKBONES:
        raise SparseCircuitsError(
            f"unknown backbone {backbone!r}; use one of: {', '.join(BACKBONES)}"
        )
    check_pair(base, reference)
    if backbone == "base":
        return base
    model = copy.deepcopy(reference.model)
    mlp_path = reference.spec.mlp
    for block, base_block in zip(
        model.get_submodule(reference.spec.blocks), base.blocks, strict=True
    ):
        block.get_submodule(mlp_path).load_state_dict(
            base_block.get_submodule(mlp_path).state_dict()
        )
    return ModelAdapter(model, reference.tokenizer, name=f"{reference.name}+base-mlps")
