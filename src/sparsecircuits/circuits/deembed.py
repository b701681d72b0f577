"""Input-invariant views of transcoder features: connections, de-embeddings, output logits
(Dunefsky et al. 2024 §3.2; norm folding in docs/internals.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecircuits.circuits.replacement import ReplacementModel
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.architectures import pull_back_norm


def encoder_directions(
    model: ReplacementModel, layer: int, features: Tensor | list[int] | None = None
) -> Tensor:
    """Return residual-stream encoder directions `[n, d]` of transcoder `layer` (all features when None).

    Gain folded (and centred for LayerNorm) for transcoders reading after ln2; scale left out.
    """
    W_enc = model.encoder(layer).W_enc
    enc = W_enc.T if features is None else W_enc[:, torch.as_tensor(features, dtype=torch.long)].T
    stage = model.tc_stage[layer]
    if stage == "residual":
        return enc
    one = torch.ones(1, dtype=enc.dtype, device=enc.device)
    return pull_back_norm(enc, model.layer_weights(layer).ln2, one, gain=stage == "gained")


def residual_decoders(
    model: ReplacementModel,
    layer: int,
    features: Tensor | list[int] | int | None = None,
    before_read: int | None = None,
) -> Tensor:
    """Return `model.decoder_vectors(layer, features, before_read)` as directions in the residual
    stream: times the gain of a post-MLP norm the transcoder writes before (scale left out)."""
    dec = model.decoder_vectors(layer, features, before_read=before_read)
    post = model.transcoder_post_norm(layer)
    return dec if post is None else dec * post.gain


def ov_pull_back(model: ReplacementModel, layer: int, head: int, vectors: Tensor) -> Tensor:
    """Return `[n, d]`: directions at the head's input (resid_pre) that its OV maps onto `vectors [n, d]`.

    `x · result == (ln1-gained x) W_V^h W_O^h · vector` (ln1 gain and centring folded, scale 1;
    a post-attention norm's gain too).
    """
    w = model.layer_weights(layer)
    one = torch.ones(1, dtype=vectors.dtype, device=vectors.device)
    if w.ln1_post is not None:
        vectors = pull_back_norm(vectors, w.ln1_post, one, gain=True)
    in_space = (vectors @ w.W_O[head].T) @ w.W_V[head].T
    return pull_back_norm(in_space, w.ln1, one, gain=True)


def connection_matrix(
    model: ReplacementModel,
    src_layer: int,
    dst_layer: int,
    head: tuple[int, int] | None = None,
    src_features: Tensor | list[int] | None = None,
    dst_features: Tensor | list[int] | None = None,
) -> Tensor:
    """Return `[n_src, n_dst]` input-invariant connections `W_dec[src] · f_enc[dst]`, through the
    OV circuit of `head = (attn_layer, h)` when given (it must sit between the two transcoders); a
    cross-layer transcoder's `W_dec[src]` sums its blocks written before the reader."""
    enc = encoder_directions(model, dst_layer, dst_features)
    if head is None:
        if not model.mlp_write(src_layer) < model.mlp_read(dst_layer):
            raise SparseCircuitsError(
                f"MLP {src_layer} does not write before transcoder {dst_layer} reads"
            )
        read = model.mlp_read(dst_layer)
    else:
        attn_layer, h = head
        if not (
            model.mlp_write(src_layer) < model.attn_read(attn_layer)
            and model.attn_write(attn_layer) < model.mlp_read(dst_layer)
        ):
            raise SparseCircuitsError(
                f"head {attn_layer}.{h} is not between transcoder {src_layer} and transcoder {dst_layer}"
            )
        enc = ov_pull_back(model, attn_layer, h, enc)
        read = model.attn_read(attn_layer)
    features = None if src_features is None else torch.as_tensor(src_features, dtype=torch.long)
    dec = residual_decoders(model, src_layer, features, before_read=read)
    return dec @ enc.T


@dataclass
class TokenScores:
    """Top / bottom vocabulary tokens of a score vector `[vocab]`."""

    scores: Tensor
    top: list[tuple[str, float]]
    bottom: list[tuple[str, float]]

    def to_dict(self) -> dict:
        """Return the top and bottom lists as JSON-ready data."""
        return {
            "top": [[t, round(v, 4)] for t, v in self.top],
            "bottom": [[t, round(v, 4)] for t, v in self.bottom],
        }


def _token_scores(model: ReplacementModel, scores: Tensor, k: int) -> TokenScores:
    decode = model.adapter.tokenizer.decode
    k = min(k, scores.numel())
    top, bottom = torch.topk(scores, k), torch.topk(-scores, k)
    return TokenScores(
        scores=scores,
        top=[(decode([int(i)]), float(v)) for v, i in zip(*top, strict=False)],
        bottom=[(decode([int(i)]), float(-v)) for v, i in zip(*bottom, strict=False)],
    )


def deembedding(
    model: ReplacementModel,
    layer: int,
    feature: int,
    head: tuple[int, int] | None = None,
    k: int = 10,
) -> TokenScores:
    """Return `W_E · f_enc` over the vocabulary (through head `(layer, h)`'s OV when given) with its top-k.

    This is how strongly each token's embedding drives the feature directly (or via the head).
    """
    enc = encoder_directions(model, layer, [feature])
    if head is not None:
        attn_layer, h = head
        if not model.attn_write(attn_layer) < model.mlp_read(layer):
            raise SparseCircuitsError(
                f"head {attn_layer}.{h} does not write before transcoder {layer} reads"
            )
        enc = ov_pull_back(model, attn_layer, h, enc)
    return _token_scores(model, model.W_E @ enc[0], k)


def head_deembedding(
    model: ReplacementModel, layer: int, head: int, vector: Tensor, k: int = 10
) -> TokenScores:
    """Return `W_E · OV^T vector` for a residual `vector [d]` read after head `(layer, head)`."""
    return _token_scores(model, model.W_E @ ov_pull_back(model, layer, head, vector[None])[0], k)


def unembed_directions(model: ReplacementModel, directions: Tensor) -> Tensor:
    """Return logit effects `[n, vocab]` of adding `directions [n, d]` to the final residual (gain folded, scale 1)."""
    ln = model.ln_final
    x = directions - directions.mean(-1, keepdim=True) if ln.kind == "layernorm" else directions
    return (x * ln.gain) @ model.W_U


def feature_logits(model: ReplacementModel, layer: int, feature: int, k: int = 10) -> TokenScores:
    """Return the direct logit effect `W_dec[feature] · W_U` (final-norm gain folded) with its top-k tokens.

    For a cross-layer transcoder `W_dec[feature]` sums the feature's decoder blocks (every one
    reaches the unembedding)."""
    dec = residual_decoders(model, layer, feature)
    return _token_scores(model, unembed_directions(model, dec[None])[0], k)
