"""ModelAdapter: an HF causal LM with canonical hooks, run-with-cache (stopping early) and splice."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.architectures import (
    ArchitectureSpec,
    AttentionWeights,
    NormParams,
    norm_params,
    spec_for_model_type,
)
from sparsecircuits.models.hooks import (
    Handle,
    HookFn,
    HookPoint,
    ModelParts,
    all_hook_names,
    attach,
    parse_hook_name,
    to_attention_implementation,
)
from sparsecircuits.models.tokens import bos_token_id


class _StopForward(Exception):
    """Raised from a hook once every requested activation is cached; caught by run_with_cache."""


class ModelAdapter:
    """An HF causal LM seen through TransformerLens hook names (`hooks.HOOK_MEANINGS`).

    Fields: `model`, `tokenizer`, `name`, `family`, `device`, `dtype`, `n_layers`, `d_model`,
    `n_heads`, `n_kv_heads`, `d_head`, `d_mlp`, `vocab_size`, `max_context`,
    `parallel_residual`, `norm_kind`, `positional`.

    Hook definitions (all `[batch, pos, d_model]` unless stated), as TransformerLens defines
    them on the same unprocessed weights:
    * `hook_embed`: token embeddings `W_E[input_ids]` only (GPT-2's learned positions are added
      after it; `blocks.0.hook_resid_pre` is their sum, `W_pos` gives the position table).
      Gemma scales them by sqrt(d_model) in the model dtype; `W_E` includes that scale.
    * `blocks.L.hook_attn_out`, `blocks.L.hook_mlp_out`: what attention / the MLP add to the
      residual stream; for Gemma that is the output of the post-attention / post-MLP norm.
      `blocks.L.mlp.hook_out` is the MLP module's own output, before any post-norm (the same
      tensor as `hook_mlp_out` for families without one).
    * `blocks.L.hook_resid_mid = resid_pre + attn_out`; so `resid_post = resid_mid + mlp_out`
      for every family.
    * `blocks.L.hook_mlp_in`: the residual the pre-MLP norm reads: `hook_resid_mid`, or
      `hook_resid_pre` with NeoX's parallel residual.
    * `blocks.L.mlp.hook_in` / `blocks.L.mlp.hook_out`: the MLP module's input (the pre-MLP
      norm's output with its gain) and output; `hook_mlp_out` is what the block adds to the
      residual.
    * `blocks.L.attn.hook_z [b, p, n_heads, d_head]`: input of the attention output projection
      (`attn_out = z @ W_O + b_O` summed over heads). `splice` flattens it to
      `[b, p, n_heads * d_head]`, which is also `hook_dim`.
    * `blocks.L.attn.hook_pattern [b, n_heads, q_pos, k_pos]`: post-softmax probabilities.
    * `*.hook_normalized`: a LayerNorm's output with its gain and bias; an RMSNorm's output
      before its gain.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str = "model") -> None:
        """Wrap a loaded HF causal LM (put in eval mode, params frozen, attention made hookable)."""
        config = model.config
        self.spec: ArchitectureSpec = spec_for_model_type(config.model_type)
        self._text_config: Any = config.get_text_config()
        dims = self._dims = self.spec.dims(self._text_config)
        to_attention_implementation(model)
        model.eval()
        model.requires_grad_(False)
        self.model: Any = model
        self.tokenizer = tokenizer
        self.name = name
        self.family = self.spec.family
        first_param = next(model.parameters())
        self.device: torch.device = first_param.device
        self.dtype: torch.dtype = first_param.dtype
        self.n_layers = dims.n_layers
        self.d_model = dims.d_model
        self.n_heads = dims.n_heads
        self.n_kv_heads = dims.n_kv_heads
        self.d_head = dims.d_head
        self.d_mlp = dims.d_mlp
        self.vocab_size = dims.vocab_size
        self.max_context = dims.max_context
        self.parallel_residual = dims.parallel_residual
        self.norm_kind = self.spec.norm_kind
        self.positional = self.spec.positional
        self._parts = ModelParts.resolve(model, self.spec, self.n_heads, self.d_head)
        self._hook_names = all_hook_names(self.n_layers)

    def __repr__(self) -> str:
        return (
            f"ModelAdapter({self.name!r}, family={self.family}, n_layers={self.n_layers}, "
            f"d_model={self.d_model}, device={self.device}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------ hook names

    def hook_names(self) -> list[str]:
        """Return every hook name of this model, in the order a forward pass produces them."""
        return list(self._hook_names)

    def hook_point(self, name: str) -> HookPoint:
        """Return the parsed hook; raise SparseCircuitsError listing valid names when unknown."""
        return parse_hook_name(name, self.n_layers)

    def hook_dim(self, name: str) -> int:
        """Return the width of the activation at `name` per position (hook_z: n_heads * d_head).

        Raises SparseCircuitsError for attn.hook_pattern, whose width depends on the context.
        """
        kind = self.hook_point(name).kind
        if kind == "attn.hook_z":
            return self.n_heads * self.d_head
        if kind == "attn.hook_pattern":
            raise SparseCircuitsError(
                f"{name} has shape [batch, n_heads, q_pos, k_pos] and no fixed width; hook a residual, MLP or z hook"
            )
        return self.d_model

    def hook_layer(self, name: str) -> int:
        """Return the block index of a hook: hook_embed -> 0, ln_final.hook_normalized -> n_layers."""
        point = self.hook_point(name)
        if point.layer is not None:
            return point.layer
        return 0 if point.kind == "hook_embed" else self.n_layers

    # ------------------------------------------------------------ running

    def _check_input(self, input_ids: Tensor) -> Tensor:
        if not isinstance(input_ids, Tensor) or input_ids.ndim != 2:
            got = (
                tuple(input_ids.shape)
                if isinstance(input_ids, Tensor)
                else type(input_ids).__name__
            )
            raise SparseCircuitsError(
                f"input_ids must be an integer tensor [batch, pos]; got {got}"
            )
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise SparseCircuitsError(
                f"input_ids must hold integer token ids; got dtype {input_ids.dtype}"
            )
        if input_ids.shape[1] > self.max_context:
            raise SparseCircuitsError(
                f"context of {input_ids.shape[1]} tokens exceeds this model's max_context {self.max_context}; "
                "use shorter contexts"
            )
        if input_ids.numel():
            low, high = (int(v) for v in torch.aminmax(input_ids))
            if low < 0 or high >= self.vocab_size:
                raise SparseCircuitsError(
                    f"token ids must lie in [0, {self.vocab_size}); got [{low}, {high}]; "
                    "tokenize with this model's tokenizer"
                )
        return input_ids.to(self.device)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Return logits [batch, pos, vocab] for input_ids [batch, pos], with active hooks applied."""
        return self.model(self._check_input(input_ids), use_cache=False).logits

    __call__ = forward

    def run_with_cache(
        self, input_ids: Tensor, hooks: Iterable[str], stop_after_last: bool = True
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Run the model and return (logits [b,p,vocab] or None, {hook name: activation}).

        With `stop_after_last` the forward pass is abandoned as soon as the last requested
        activation is cached, so later layers (and the unembedding) never run; logits are then
        None. With no hooks requested the full forward runs. Activations are the tensors the
        model computed (no copies); with grad enabled they carry the graph.
        """
        input_ids = self._check_input(input_ids)
        names = [hooks] if isinstance(hooks, str) else list(dict.fromkeys(hooks))
        points = [self.hook_point(name) for name in names]
        stop = stop_after_last and bool(points)
        cache: dict[str, Tensor] = {}

        def capture(name: str) -> HookFn:
            def store(act: Tensor) -> None:
                cache[name] = act
                if stop and len(cache) == len(points):
                    raise _StopForward

            return store

        with self._attached([(point, capture(point.name)) for point in points]):
            try:
                logits: Tensor | None = self.model(input_ids, use_cache=False).logits
            except _StopForward:
                logits = None
        missing = [name for name in names if name not in cache]
        if missing:
            raise RuntimeError(
                f"hooks {missing} never fired; the architecture table for {self.family} is wrong"
            )
        return logits, {name: cache[name] for name in names}

    # ------------------------------------------------------------ hooks and splice

    @contextlib.contextmanager
    def _attached(self, hooks: Sequence[tuple[HookPoint, HookFn]]) -> Iterator[None]:
        handles: list[Handle] = []
        try:
            # Forward order, so that e.g. a resid_mid hook sees an attn_out replaced in the same call.
            for point, fn in sorted(hooks, key=lambda pair: pair[0].order):
                handles.extend(attach(self._parts, point, fn))
            yield
        finally:
            for handle in reversed(handles):
                handle.remove()

    @contextlib.contextmanager
    def hooks(self, hook_fns: Mapping[str, HookFn]) -> Iterator[ModelAdapter]:
        """Context manager: while active, `fn(activation)` runs at each named hook.

        A fn returning a tensor replaces the activation downstream; returning None only reads.
        Hooks are removed on exit, also when the body raises.
        """
        pairs = [(self.hook_point(name), fn) for name, fn in hook_fns.items()]
        with self._attached(pairs):
            yield self

    def splice_points(self, hook_in: str, hook_out: str) -> tuple[HookPoint, HookPoint]:
        """Return the hook points of a splice reading `hook_in` and writing `hook_out`; raise
        unless both are model hooks other than an attention pattern, the input no later."""
        point_in, point_out = self.hook_point(hook_in), self.hook_point(hook_out)
        for point in (point_in, point_out):
            if point.kind == "attn.hook_pattern":
                raise SparseCircuitsError(
                    f"cannot splice at {point.name}; use residual, MLP or attention-output hooks "
                    "(hooks() edits attention patterns)"
                )
        if point_in.order > point_out.order:
            raise SparseCircuitsError(
                f"a splice reads {hook_in} after it writes {hook_out}; "
                "each hook_in must come before its hook_out"
            )
        return point_in, point_out

    @contextlib.contextmanager
    def splice(
        self, hook_in: str, hook_out: str, fn: Callable[[Tensor], Tensor]
    ) -> Iterator[ModelAdapter]:
        """Context manager: the activation at hook_out becomes `fn(activation at hook_in)`.

        Both are `[batch, pos, d]` (hook_z flattened to `[batch, pos, n_heads * d_head]`).
        `hook_in` may equal `hook_out` (an SAE) or come earlier in the forward pass
        (a transcoder: `blocks.L.mlp.hook_in` -> `blocks.L.mlp.hook_out`).
        """
        point_in, point_out = self.splice_points(hook_in, hook_out)

        def flat(act: Tensor) -> Tensor:
            return act.flatten(-2) if act.ndim == 4 else act

        def unflat(out: Tensor, act: Tensor) -> Tensor:
            # Only hook_z is 4-D; a wrong shape is left for the hook's shape check to report.
            return out.reshape(act.shape) if act.ndim == 4 and out.shape == flat(act).shape else out

        if point_in == point_out:

            def replace_same(act: Tensor) -> Tensor:
                return unflat(fn(flat(act)), act)

            with self._attached([(point_out, replace_same)]):
                yield self
            return

        seen: dict[str, Tensor] = {}

        def keep_input(act: Tensor) -> None:
            seen["in"] = flat(act)

        def replace_output(act: Tensor) -> Tensor:
            if "in" not in seen:
                raise RuntimeError(f"splice: {hook_in} did not run before {hook_out}")
            return unflat(fn(seen.pop("in")), act)

        with self._attached([(point_in, keep_input), (point_out, replace_output)]):
            yield self

    # ------------------------------------------------------------ tokens

    @property
    def bos_token_id(self) -> int | None:
        """Return the id prepended as BOS (`tokens.bos_token_id`: tokenizer's BOS, else the
        model config's, else EOS)."""
        return bos_token_id(self.tokenizer, self.model.config)

    def tokenize(self, texts: str | Sequence[str], prepend_bos: bool = True) -> Tensor:
        """Return input_ids [len(texts), longest] on self.device (LongTensor).

        Shorter texts are right-padded with the pad (else EOS) token; with causal attention the
        padding never changes the real positions. No special tokens are added except the BOS.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise SparseCircuitsError(
                "tokenize got no texts; pass a string or a non-empty list of strings"
            )
        rows = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        if prepend_bos:
            bos = self.bos_token_id
            if bos is None:
                raise SparseCircuitsError(
                    "this tokenizer has no BOS or EOS token; call tokenize with prepend_bos=False"
                )
            rows = [[bos, *row] for row in rows]
        longest = max(len(row) for row in rows)
        if longest == 0:
            raise SparseCircuitsError("all texts tokenized to nothing; pass non-empty texts")
        if longest > self.max_context:
            raise SparseCircuitsError(
                f"a text is {longest} tokens, over this model's max_context {self.max_context}; shorten it"
            )
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None) or 0
        input_ids = torch.full((len(rows), longest), int(pad), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return input_ids.to(self.device)

    # ------------------------------------------------------------ weights

    @property
    def blocks(self) -> list[nn.Module]:
        """Return the transformer block modules, in order."""
        return [modules.block for modules in self._parts.blocks]

    @property
    def W_E(self) -> Tensor:
        """Return the token embedding matrix [vocab, d_model]: what a token adds to the residual
        stream (Gemma's `embed_scale`, sqrt(d_model) cast to the model dtype, included). For
        Gemma this is a scaled copy of the whole vocabulary; `embed_tokens` avoids it."""
        return self.embed_tokens(None)

    def embed_tokens(self, input_ids: Tensor | None, dtype: torch.dtype | None = None) -> Tensor:
        """Return `W_E[input_ids]` `[*input_ids.shape, d_model]` (all of `W_E` for None), scaled
        as the model scales it and only then cast to `dtype`, so the rows equal those of `W_E`
        bit for bit without a scaled copy of the vocabulary."""
        weight = self._parts.embed.weight.detach()
        rows = weight if input_ids is None else weight[input_ids]
        scale = getattr(self._parts.embed, "embed_scale", None)
        if scale is not None:
            rows = rows * scale.to(weight.dtype)
        return rows if dtype is None else rows.to(dtype)

    @property
    def W_pos(self) -> Tensor | None:
        """Return the learned position embeddings [max_context, d_model] (GPT-2), else None."""
        if self.spec.pos_embed is None:
            return None
        return self.model.get_submodule(self.spec.pos_embed).weight.detach()

    @property
    def W_U(self) -> Tensor:
        """Return the unembedding [d_model, vocab]."""
        return self._parts.unembed.weight.detach().T

    @property
    def b_U(self) -> Tensor:
        """Return the unembedding bias [vocab] (zeros when the model has none)."""
        bias = getattr(self._parts.unembed, "bias", None)
        if bias is None:
            return torch.zeros(self.vocab_size, dtype=self.dtype, device=self.device)
        return bias.detach()

    def attention_weights(self, layer: int) -> AttentionWeights:
        """Return W_Q/W_K/W_V [n_heads,d_model,d_head], b_Q/b_K/b_V [n_heads,d_head],
        W_O [n_heads,d_head,d_model], b_O [d_model] of one layer (kv heads expanded for GQA)."""
        return self.spec.attention_weights(self._parts.blocks[self._layer(layer)].attn, self._dims)

    def W_Q(self, layer: int) -> Tensor:
        """Return the query weights of `layer`, [n_heads, d_model, d_head]."""
        return self.attention_weights(layer).W_Q

    def W_K(self, layer: int) -> Tensor:
        """Return the key weights of `layer`, [n_heads, d_model, d_head] (GQA heads repeated)."""
        return self.attention_weights(layer).W_K

    def W_V(self, layer: int) -> Tensor:
        """Return the value weights of `layer`, [n_heads, d_model, d_head] (GQA heads repeated)."""
        return self.attention_weights(layer).W_V

    def W_O(self, layer: int) -> Tensor:
        """Return the output weights of `layer`, [n_heads, d_head, d_model]."""
        return self.attention_weights(layer).W_O

    def b_O(self, layer: int) -> Tensor:
        """Return the attention output bias of `layer`, [d_model] (zeros when absent)."""
        return self.attention_weights(layer).b_O

    def attn_scale(self, layer: int) -> float:
        """Return the factor multiplying q.k in `layer` (1/sqrt(d_head) unless the model says otherwise)."""
        return float(self._parts.blocks[self._layer(layer)].attn.scaling)

    def attn_softcap(self, layer: int) -> float | None:
        """Return c when `layer` soft-caps its attention scores, `c * tanh(scores / c)` after
        scaling and before the mask (Gemma-2), else None."""
        self._layer(layer)
        return self._config_cap(self.spec.attn_softcap_key)

    @property
    def logit_softcap(self) -> float | None:
        """Return c when the model soft-caps its logits, `c * tanh(logits / c)` (Gemma), else None."""
        return self._config_cap(self.spec.logit_softcap_key)

    def _config_cap(self, key: str | None) -> float | None:
        cap = None if key is None else getattr(self._text_config, key, None)
        return None if cap is None else float(cap)

    def sliding_window(self, layer: int) -> int | None:
        """Return how many positions back attention in `layer` may look (itself included), or
        None when it sees the whole prefix."""
        windows = self._dims.sliding_windows
        return windows[self._layer(layer)] if windows else None

    def qk_norms(self, layer: int) -> tuple[NormParams, NormParams] | None:
        """Return the per-head RMSNorms applied to queries and keys before RoPE (Qwen3, Gemma-3),
        else None."""
        if self.spec.qk_norms is None:
            return None
        attn = self._parts.blocks[self._layer(layer)].attn
        q_path, k_path = self.spec.qk_norms
        offset = self.spec.norm_offset
        return (
            norm_params(attn.get_submodule(q_path), "rmsnorm", offset),
            norm_params(attn.get_submodule(k_path), "rmsnorm", offset),
        )

    def norm(self, which: str, layer: int | None = None) -> NormParams:
        """Return kind, gain, bias and eps of "ln1" / "ln2" (give `layer`) or "ln_final"."""
        offset = self.spec.norm_offset
        if which == "ln_final":
            return norm_params(self._parts.ln_final, self.norm_kind, offset)
        if which not in ("ln1", "ln2") or layer is None:
            raise SparseCircuitsError(
                f"norm({which!r}, {layer}) is not a norm; use 'ln1'/'ln2' with a layer, or 'ln_final'"
            )
        modules = self._parts.blocks[self._layer(layer)]
        return norm_params(modules.ln1 if which == "ln1" else modules.ln2, self.norm_kind, offset)

    def post_norm(self, which: str, layer: int) -> NormParams | None:
        """Return the norm between "attn" / "mlp" of `layer` and the residual stream (Gemma's
        post-attention and post-feedforward norms), or None when the family has none."""
        if which not in ("attn", "mlp"):
            raise SparseCircuitsError(f"post_norm({which!r}) is not a norm; use 'attn' or 'mlp'")
        path = self.spec.attn_post_norm if which == "attn" else self.spec.mlp_post_norm
        if path is None:
            return None
        block = self._parts.blocks[self._layer(layer)].block
        return norm_params(block.get_submodule(path), self.norm_kind, self.spec.norm_offset)

    def rotary_cos_sin(
        self, positions: Tensor, layer: int | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """Return RoPE (cos, sin), each [len(positions), rotary_dim], for rotary models, else None.

        A rotated vector is `x[..., :r] * cos + rotate_half(x[..., :r]) * sin` on its first
        r = rotary_dim dims (NeoX rotates only a fraction of each head), the rest unchanged.
        Scaled RoPE (Llama-3's "llama3" type, linear, ...) comes from the model's own rotary
        module. Gemma-3 rotates local (sliding) and global layers with different bases: give
        `layer` there (without it, the first layer's).
        """
        if self.spec.rotary_emb is None:
            return None
        rotary: Any = self.model.get_submodule(self.spec.rotary_emb)
        positions = positions.to(self.device).reshape(1, -1)
        probe = torch.zeros(1, dtype=self.dtype, device=self.device)
        if self.spec.rotary_by_layer_type:
            layer_type = self._text_config.layer_types[self._layer(layer or 0)]
            cos, sin = rotary(probe, positions, layer_type)
        else:
            cos, sin = rotary(probe, positions)
        return cos[0], sin[0]

    def _layer(self, layer: int) -> int:
        if not 0 <= layer < self.n_layers:
            raise SparseCircuitsError(
                f"layer {layer} is out of range; this model has layers 0..{self.n_layers - 1}"
            )
        return layer
