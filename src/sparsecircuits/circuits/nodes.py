"""Circuit nodes: what an attribution is *to*, with paper-style labels (`mlp8tc[89]@5`,
`attn9[1]@6->8`, ...; docs/internals.md) and the edit that ablates it."""

from __future__ import annotations

from dataclasses import dataclass

from sparsecircuits.circuits.replacement import Edits, EmbedEdit, ErrorEdit, FeatureEdit, HeadEdit


@dataclass(frozen=True)
class FeatureNode:
    """Transcoder feature `feature` of layer `layer` at position `pos`."""

    layer: int
    pos: int
    feature: int

    @property
    def label(self) -> str:
        """Return e.g. `mlp3tc[17]@5`."""
        return f"mlp{self.layer}tc[{self.feature}]@{self.pos}"

    def ablation(self, batch: int | None = None) -> Edits:
        """Return the edit that zeroes this feature's activation."""
        return Edits(features=[FeatureEdit(self.layer, self.pos, self.feature, batch=batch)])


@dataclass(frozen=True)
class HeadNode:
    """Attention head `head` of layer `layer` moving information from `src` to `dest`.

    `dest`/`src` None means every destination / source position.
    """

    layer: int
    head: int
    dest: int | None = None
    src: int | None = None

    @property
    def label(self) -> str:
        """Return e.g. `attn9[1]@6->8` (source 6, destination 8)."""
        src = "*" if self.src is None else self.src
        dest = "*" if self.dest is None else self.dest
        return f"attn{self.layer}[{self.head}]@{src}->{dest}"

    def ablation(self, batch: int | None = None) -> Edits:
        """Return the edit that zeroes the head's attention weights from src to dest."""
        return Edits(
            heads=[HeadEdit(self.layer, self.head, dest=self.dest, src=self.src, batch=batch)]
        )


@dataclass(frozen=True)
class ErrorNode:
    """Transcoder error (true MLP output minus transcoder output) of `layer` at `pos`.

    For a layer without a transcoder it is the whole (frozen) MLP output.
    """

    layer: int
    pos: int

    @property
    def label(self) -> str:
        """Return e.g. `err4@8`."""
        return f"err{self.layer}@{self.pos}"

    def ablation(self, batch: int | None = None) -> Edits:
        """Return the edit that zeroes this error term."""
        return Edits(errors=[ErrorEdit(self.layer, pos=self.pos, batch=batch)])


@dataclass(frozen=True)
class EmbedNode:
    """The token (plus learned positional) embedding at `pos`."""

    pos: int

    @property
    def label(self) -> str:
        """Return e.g. `embed@3`."""
        return f"embed@{self.pos}"

    def ablation(self, batch: int | None = None) -> Edits:
        """Return the edit that zeroes this embedding."""
        return Edits(embeds=[EmbedEdit(pos=self.pos, batch=batch)])


Node = FeatureNode | HeadNode | ErrorNode | EmbedNode
