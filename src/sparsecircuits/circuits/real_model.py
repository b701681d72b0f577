"""Feature and neuron ablations in the real model: the Hugging Face forward pass with hooks, a
transcoder spliced in only where an edit acts (docs/internals.md).

At every spliced layer t the MLP output becomes

    mlp_out_t = transcoder_t(live inputs, edited features) + error_t,
    error_t   = true MLP_t(clean input) - transcoder_t(clean input)      (fixed from the clean run)

computed as `clean mlp_out_t + (transcoder_t(live, edited) - transcoder_t(clean))`, so that with no
edit the spliced layer returns the clean MLP output bit for bit. The error is fixed from the clean
run (the standard of feature-ablation studies): it is the part of the MLP the transcoder does not
explain, and holding it fixed lets an ablation remove exactly `act · W_dec` at the edited position
without the MLP re-growing the ablated direction. Everything else is live: attention, norms, every
unspliced MLP (the real one), and the spliced transcoders' features downstream of an edit. Zeroing
feature i at (layer L, position p) therefore changes L's MLP output by exactly `-a_i · W_dec[i]`
at p. For a cross-layer transcoder every layer a spliced source writes to is spliced.

Neuron edits act on the input of the MLP's output projection (the neurons' activations), with no
transcoder involved, so the two kinds of ablation run in the same model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecircuits.circuits.edits import Edits, edit_features, scale_positions
from sparsecircuits.circuits.replacement import ReplacementModel
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models import ModelAdapter

NeuronFn = Callable[[Tensor], Tensor]  # neuron activations [b, p, d_mlp] -> edited copy


@dataclass
class CleanSplice:
    """The clean run of `input_ids [b, p]` at the spliced `layers`: the true MLP outputs
    `mlp_out[t] [b, p, d]` and the transcoders' outputs `tc_out[t] [b, p, d]` (model dtype)."""

    input_ids: Tensor
    layers: tuple[int, ...]
    mlp_out: dict[int, Tensor]
    tc_out: dict[int, Tensor]


def edited_layers(model: ReplacementModel, edits: Edits) -> tuple[int, ...]:
    """The layers whose MLP output `edits` change: the layers of feature edits, feature functions,
    error edits and dropped errors, and every layer their features write to (cross-layer)."""
    if edits.heads or edits.embeds:
        raise SparseCircuitsError(
            "real-model ablations take feature and error edits only; use ReplacementModel "
            "for head or embedding edits"
        )
    sources = {e.layer for e in edits.features} | set(edits.feature_fns)
    targets = {e.layer for e in edits.errors} | set(edits.drop_errors)
    for layer in sources | targets:
        if layer not in model.feature_layers:
            raise SparseCircuitsError(
                f"layer {layer} has no transcoder; edit layers {model.feature_layers}"
            )
    for layer in sources:
        targets |= {target for target, _ in model.decoders(layer)}
    return tuple(sorted(targets))


@torch.no_grad()
def _spliced_pass(
    model: ReplacementModel,
    input_ids: Tensor,
    layers: tuple[int, ...],
    edits: Edits,
    clean: CleanSplice | None,
) -> tuple[Tensor, dict[int, Tensor], dict[int, Tensor]]:
    """One HF forward with `layers` spliced; returns logits and the (true MLP, transcoder) outputs
    of the spliced layers. Without `clean` nothing is replaced (this is the clean run)."""
    sources = [s for s in model.feature_layers if any(t in layers for t, _ in model.decoders(s))]
    acts: dict[int, Tensor] = {}
    tc_ins: dict[int, Tensor] = {}
    mlp_outs: dict[int, Tensor] = {}
    tc_outs: dict[int, Tensor] = {}
    tcs = model.transcoders

    def read(layer: int) -> Callable[[Tensor], None]:
        def fn(act: Tensor) -> None:
            x = act.to(model.dtype)
            tc_ins[layer] = x
            a = tcs.encode_layer(x, layer).to(model.dtype)
            a = edit_features(a, [e for e in edits.features if e.layer == layer])
            acts[layer] = edits.feature_fns[layer](a) if layer in edits.feature_fns else a

        return fn

    def write(layer: int) -> Callable[[Tensor], Tensor | None]:
        def fn(act: Tensor) -> Tensor | None:
            tc = model.transcoder_output(layer, acts, tc_ins[layer])
            mlp_outs[layer], tc_outs[layer] = act.to(model.dtype), tc
            if clean is None:
                return None
            error = clean.mlp_out[layer] - clean.tc_out[layer]
            kept = (
                torch.zeros_like(error)
                if layer in edits.drop_errors
                else scale_positions(error, [e for e in edits.errors if e.layer == layer])
            )
            # kept - error is exactly 0 where the error is untouched
            return (clean.mlp_out[layer] + (tc - clean.tc_out[layer]) + (kept - error)).to(
                act.dtype
            )

        return fn

    hook_fns: dict[str, Callable[[Tensor], Tensor | None]] = {}
    for layer in sources:
        hook_fns[tcs.hook_in(layer)] = read(layer)
    for layer in layers:
        hook_fns[tcs.hook_out(layer)] = write(layer)
    with model.adapter.hooks(hook_fns):
        logits = model.adapter.forward(input_ids)
    return logits, mlp_outs, tc_outs


def clean_splice(model: ReplacementModel, input_ids: Tensor, layers: Iterable[int]) -> CleanSplice:
    """Run `input_ids [b, p]` once, recording the true MLP and transcoder outputs of `layers`."""
    spliced = tuple(sorted(set(layers)))
    input_ids = input_ids.to(model.device)
    _, mlp_out, tc_out = _spliced_pass(model, input_ids, spliced, Edits(), None)
    return CleanSplice(input_ids, spliced, mlp_out, tc_out)


def real_model_logits(
    model: ReplacementModel,
    input_ids: Tensor,
    edits: Edits | None = None,
    clean: CleanSplice | None = None,
    layers: Iterable[int] = (),
) -> Tensor:
    """Logits `[b, p, vocab]` of the real model on `input_ids [b, p]` with `edits` (feature edits,
    feature functions, error edits) applied to transcoders spliced at the edited layers plus
    `layers`, errors fixed from the clean run (module docstring). `clean` (from `clean_splice` on
    the same ids, covering those layers) saves the clean pass when many edits share the prompts."""
    edits = edits or Edits()
    spliced = tuple(sorted(set(edited_layers(model, edits)) | set(layers)))
    input_ids = input_ids.to(model.device)
    if clean is None or not set(spliced) <= set(clean.layers):
        clean = clean_splice(model, input_ids, spliced)
    elif clean.input_ids.shape != input_ids.shape or not torch.equal(clean.input_ids, input_ids):
        raise SparseCircuitsError("clean splice was recorded on other prompts; rerun clean_splice")
    logits, _, _ = _spliced_pass(model, input_ids, spliced, edits, clean)
    return logits


@torch.no_grad()
def neuron_logits(
    adapter: ModelAdapter, input_ids: Tensor, neuron_fns: Mapping[int, NeuronFn]
) -> Tensor:
    """Logits `[b, p, vocab]` of `input_ids` with `neuron_fns[layer]` mapping that layer's neuron
    activations (the input of the MLP's output projection, `[b, p, d_mlp]`) to an edited copy."""
    handles = []

    def pre_hook(fn: NeuronFn) -> Callable[[torch.nn.Module, tuple], tuple]:
        return lambda _module, args: (fn(args[0]), *args[1:])

    try:
        for layer, fn in neuron_fns.items():
            proj = adapter.blocks[layer].get_submodule(adapter.spec.mlp_out_proj)
            handles.append(proj.register_forward_pre_hook(pre_hook(fn)))
        return adapter.forward(input_ids.to(adapter.device))
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def neuron_activations(adapter: ModelAdapter, input_ids: Tensor, layer: int) -> Tensor:
    """The neuron activations `[b, p, d_mlp]` of `layer` on `input_ids` (clean run)."""
    seen: list[Tensor] = []

    def record(hidden: Tensor) -> Tensor:
        seen.append(hidden.detach().clone())
        return hidden

    neuron_logits(adapter, input_ids, {layer: record})
    return seen[0]
