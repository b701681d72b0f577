"""Transcoder sets: what a replacement model puts in place of a model's MLPs (docs/internals.md)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, cast, runtime_checkable

from torch import Tensor

from sparsecircuits.dictionaries.base import Dictionary, EncoderWeights
from sparsecircuits.dictionaries.clt import CrossLayerTranscoder
from sparsecircuits.errors import SparseCircuitsError


@runtime_checkable
class TranscoderSet(Protocol):
    """Features that replace a model's MLP outputs, layer by layer (docs/internals.md)."""

    @property
    def layers(self) -> list[int]:
        """The model layers with features, increasing."""
        ...

    def hook_in(self, layer: int) -> str:
        """The hook layer `layer`'s features read."""
        ...

    def hook_out(self, layer: int) -> str:
        """The hook layer `layer`'s output replaces."""
        ...

    def encode_layer(self, x: Tensor, layer: int) -> Tensor:
        """Feature activations `[..., d_sae]` of layer `layer` from its input `x [..., d_in]`."""
        ...

    def encoder(self, layer: int) -> EncoderWeights:
        """Layer `layer`'s encoder weights."""
        ...

    def decoders(self, layer: int) -> list[tuple[int, Tensor]]:
        """`[(target layer, W_dec block [d_sae, d_out])]`, targets increasing."""
        ...

    def skip(self, layer: int) -> Tensor | None:
        """`W_skip [d_out, d_in]`, or None."""
        ...

    def output_bias(self, layer: int) -> Tensor:
        """The bias `[d_out]` added to layer `layer`'s output."""
        ...


class PerLayerTranscoders(Mapping[int, Dictionary]):
    """One transcoder (or skip transcoder) per model layer, as a `TranscoderSet`.

    Also a read-only `{layer: Dictionary}` mapping, sorted by layer.
    """

    def __init__(self, transcoders: Mapping[int, Dictionary]) -> None:
        checked: dict[int, Dictionary] = {}
        for layer, transcoder in transcoders.items():
            if not isinstance(transcoder, Dictionary):
                raise SparseCircuitsError(
                    f"layer {layer}: expected a transcoder, got {type(transcoder).__name__}"
                )
            if transcoder.cfg.kind == "sae":
                raise SparseCircuitsError(
                    f"layer {layer}: got an SAE; a transcoder set needs transcoders"
                )
            checked[int(layer)] = transcoder
        if not checked:
            raise SparseCircuitsError("no transcoders given; pass at least one layer's transcoder")
        self._by_layer = dict(sorted(checked.items()))

    def __getitem__(self, layer: int) -> Dictionary:
        return self._by_layer[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_layer)

    def __len__(self) -> int:
        return len(self._by_layer)

    def __repr__(self) -> str:
        return f"PerLayerTranscoders(layers={self.layers})"

    @property
    def layers(self) -> list[int]:
        """The layers with a transcoder, increasing."""
        return list(self._by_layer)

    def _at(self, layer: int) -> Dictionary:
        if layer not in self._by_layer:
            raise SparseCircuitsError(
                f"layer {layer} has no transcoder; layers with transcoders: {self.layers}"
            )
        return self._by_layer[layer]

    def hook_in(self, layer: int) -> str:
        """The transcoder's input hook."""
        return self._at(layer).cfg.hook_in

    def hook_out(self, layer: int) -> str:
        """The transcoder's output hook."""
        return self._at(layer).cfg.hook_out

    def encode_layer(self, x: Tensor, layer: int) -> Tensor:
        """`encode(x)` of layer `layer`'s transcoder, `[..., d_sae]`."""
        transcoder = self._at(layer)
        return transcoder.encode(x.to(transcoder.W_dec.device, transcoder.W_dec.dtype))

    def encoder(self, layer: int) -> EncoderWeights:
        """Layer `layer`'s `W_enc`, `b_enc`, `b_in`."""
        return self._at(layer).encoder()

    def decoders(self, layer: int) -> list[tuple[int, Tensor]]:
        """`[(layer, W_dec [d_sae, d_out])]`."""
        return [(layer, self._at(layer).W_dec)]

    def skip(self, layer: int) -> Tensor | None:
        """`W_skip` of a skip transcoder, else None."""
        return self._at(layer).W_skip

    def output_bias(self, layer: int) -> Tensor:
        """`b_dec [d_out]`."""
        return self._at(layer).b_dec


def as_transcoder_set(
    transcoders: TranscoderSet | Mapping[int, Dictionary | CrossLayerTranscoder] | object,
) -> TranscoderSet:
    """Return `transcoders` (a transcoder set, `{layer: transcoder}`, or `{layer: clt}` over exactly
    the CLT's layers) as a `TranscoderSet`; raise `SparseCircuitsError` for anything else."""
    if isinstance(transcoders, PerLayerTranscoders | CrossLayerTranscoder):
        return transcoders
    if isinstance(transcoders, Dictionary):
        what = "an SAE" if transcoders.cfg.kind == "sae" else "a single transcoder"
        raise SparseCircuitsError(
            f"got {what}; pass {{layer: transcoder}}, a PerLayerTranscoders or a CrossLayerTranscoder"
        )
    if not isinstance(transcoders, Mapping):
        raise SparseCircuitsError(
            "transcoders must be {layer: transcoder}, a PerLayerTranscoders or a CrossLayerTranscoder, "
            f"got {type(transcoders).__name__}"
        )
    clts = {id(t): t for t in transcoders.values() if isinstance(t, CrossLayerTranscoder)}
    if not clts:
        return PerLayerTranscoders(cast(Mapping[int, Dictionary], transcoders))
    if len(clts) > 1 or len(clts) != len({id(t) for t in transcoders.values()}):
        raise SparseCircuitsError(
            "pass either per-layer transcoders or one cross-layer transcoder, not a mix"
        )
    clt = next(iter(clts.values()))
    if sorted(int(layer) for layer in transcoders) != clt.layers:
        raise SparseCircuitsError(
            f"the cross-layer transcoder covers layers {clt.layers} but was given for layers "
            f"{sorted(transcoders)}; pass the CrossLayerTranscoder itself"
        )
    return clt
