"""The compared libraries, each driven through its own public API (imported lazily).

* eai-sparsify: `sparsify.SparseCoder` forward (FVU) + backward + `torch.optim.Adam` — what its
  `Trainer` does per step with `optimizer="adam"` when bitsandbytes is absent, including the
  decoder renormalisation / parallel-gradient removal for SAEs and the fired-latent mask.
  End to end: `sparsify.Trainer(TrainConfig, dataset, model).fit()` on the model as its CLI
  loads it (`AutoModel`, no LM head).
* SAELens: `SAETrainer.step(batch)` — its public per-step seam (training forward, backward,
  grad-norm clip 1.0, Adam, LR scheduler, firing statistics) — on a `TopKTrainingSAE` (default
  config, or `use_sparse_activations=True`) or a `StandardTrainingSAE` (ReLU + L1).
* circuit-tracer: `attribute(input_ids, model)` with a `ReplacementModel.from_config` model
  (transformerlens backend) whose weights are converted from the same HF GPT-2 by
  TransformerLens' own converter, and a `TranscoderSet` built from our transcoders.

Each `available_*` returns None when the library imports, else the reason it does not.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import redirect_library_output


def _why_missing(module: str, dist: str) -> str | None:
    try:
        with redirect_library_output():
            importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not measurable"
        return (
            f"{dist} not importable ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
            "run `make bench-env` and use .venv-bench/bin/python"
        )
    return None


def available_sparsify() -> str | None:
    """None if eai-sparsify imports, else why not."""
    return _why_missing("sparsify", "eai-sparsify")


def available_saelens() -> str | None:
    """None if sae-lens imports, else why not."""
    return _why_missing("sae_lens", "sae-lens")


def available_circuit_tracer() -> str | None:
    """None if circuit-tracer imports, else why not."""
    return _why_missing("circuit_tracer", "circuit-tracer")


# ------------------------------------------------------------------------------ sparsify


def sparsify_step(
    kind: str,
    d_in: int,
    d_sae: int,
    k: int,
    x: Tensor,
    target: Tensor,
    dtype: torch.dtype,
    lr: float,
    dead: Tensor | None = None,
) -> Callable[[], None]:
    """One sparsify training step on the in-memory batch, as a closure. With `dead` (latent
    indices) those latents are dead in every step and the loss adds AuxK weighted by our
    `DictionaryConfig.aux_k_coefficient` default, as its trainer does when `auxk_alpha > 0` (its
    default is 0: no AuxK)."""
    with redirect_library_output():
        from sparsify import SparseCoder, SparseCoderConfig

    from sparsecircuits.dictionaries import DictionaryConfig

    auxk_alpha = DictionaryConfig.__dataclass_fields__["aux_k_coefficient"].default

    transcode = kind != "sae"
    cfg = SparseCoderConfig(num_latents=d_sae, k=k, transcode=transcode)
    torch.manual_seed(0)
    coder = SparseCoder(d_in, cfg, device=x.device, dtype=dtype)
    optimizer = torch.optim.Adam(coder.parameters(), lr=lr)
    did_fire = torch.zeros(d_sae, dtype=torch.bool, device=x.device)
    x = x.to(dtype)
    y = target.to(dtype) if transcode else x
    dead_mask = None
    if dead is not None:
        dead_mask = torch.zeros(d_sae, dtype=torch.bool, device=x.device)
        dead_mask[dead.to(x.device)] = True

    def step() -> None:
        if cfg.normalize_decoder and not transcode:
            coder.set_decoder_norm_to_unit_norm()
        out = coder(x=x, y=y, dead_mask=dead_mask)
        did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu if dead_mask is None else out.fvu + auxk_alpha * out.auxk_loss
        loss.backward()
        float(out.fvu.detach())  # the trainer logs the FVU every step
        if cfg.normalize_decoder and not transcode:
            coder.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()

    return step


def sparsify_cli_model_dtype(device: str) -> torch.dtype | str:
    """The dtype sparsify's CLI loads the model in: bf16 where CUDA supports it, else the
    checkpoint's own ("auto"), as `sparsify.__main__.load_artifacts` decides."""
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return "auto"


def sparsify_fit(
    model_dir: str,
    hook_layer: int,
    contexts: Tensor,
    d_sae: int,
    k: int,
    batch_contexts: int,
    save_dir: str,
    device: str,
) -> Callable[[], int]:
    """A closure running sparsify's `Trainer.fit()` over `contexts`; returns tokens trained.

    The model is loaded the way `python -m sparsify` loads it for its default `loss_fn="fvu"`:
    `AutoModel` (the base model, no LM head, so no logits are computed), in
    `sparsify_cli_model_dtype`. Its trainer then runs that base model's full forward per batch
    with the transcoder trained in a forward hook on `h.{hook_layer}.mlp`.
    """
    with redirect_library_output():
        import datasets
        from sparsify import SparseCoderConfig, TrainConfig, Trainer
        from transformers import AutoModel

    model: Any = AutoModel.from_pretrained(model_dir, dtype=sparsify_cli_model_dtype(device))
    model = model.to(device)
    dataset = datasets.Dataset.from_dict({"input_ids": contexts.tolist()}).with_format("torch")

    def fit() -> int:
        cfg = TrainConfig(
            SparseCoderConfig(num_latents=d_sae, k=k, transcode=True),
            batch_size=batch_contexts,
            hookpoints=[f"h.{hook_layer}.mlp"],
            optimizer="adam",
            lr_warmup_steps=1,
            log_to_wandb=False,
            save_every=10**9,
            save_dir=save_dir,
        )
        with redirect_library_output():
            Trainer(cfg, dataset, model).fit()
        return (len(dataset) // batch_contexts) * batch_contexts * contexts.shape[1]

    return fit


# ------------------------------------------------------------------------------ SAELens


def saelens_step(
    architecture: str,
    d_in: int,
    d_sae: int,
    k: int,
    x: Tensor,
    dtype: str,
    lr: float,
    sparse_activations: bool = False,
    l1_coefficient: float = 1e-3,
    autocast: bool = False,
) -> Callable[[], None]:
    """One `SAETrainer.step` of a SAELens TopK, standard (ReLU) or JumpReLU training SAE, as a
    closure."""
    with redirect_library_output():
        from sae_lens import SAETrainer, StandardTrainingSAE, TopKTrainingSAE
        from sae_lens.config import SAETrainerConfig
        from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
        from sae_lens.saes.standard_sae import StandardTrainingSAEConfig
        from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    device = str(x.device)
    torch.manual_seed(0)
    sae: Any
    if architecture == "topk":
        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(
                d_in=d_in,
                d_sae=d_sae,
                k=k,
                dtype=dtype,
                device=device,
                use_sparse_activations=sparse_activations,
            )
        )
    elif architecture == "jumprelu":
        sae = JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, dtype=dtype, device=device)
        )
    else:
        sae = StandardTrainingSAE(
            StandardTrainingSAEConfig(
                d_in=d_in,
                d_sae=d_sae,
                dtype=dtype,
                device=device,
                l1_coefficient=l1_coefficient,
            )
        )
    trainer_cfg = SAETrainerConfig(
        total_training_samples=10**12,
        train_batch_size_samples=x.shape[0],
        lr=lr,
        lr_end=lr / 10,
        device=device,
        autocast=autocast,
    )
    with redirect_library_output():
        trainer = SAETrainer(trainer_cfg, sae, data_provider=iter(()))
    batch = x.to(sae.W_enc.dtype)

    def step() -> None:
        trainer.step(batch)
        trainer.n_training_steps += 1

    return step


# ------------------------------------------------------------------------------ circuit-tracer


def circuit_tracer_model(adapter: Any, transcoders: dict[int, Any]) -> Any:
    """A circuit-tracer `ReplacementModel` of the adapter's GPT-2 with our transcoders.

    `ReplacementModel.from_pretrained*` goes through `HookedTransformer.from_pretrained`, which
    accepts only TransformerLens' list of official hub names and downloads their configs, so a
    local model cannot load that way offline. `ReplacementModel.from_config` (what
    circuit-tracer's own tests use) takes a `HookedTransformerConfig`; the weights come from
    TransformerLens' `convert_gpt2_weights` applied to the same HF model.
    """
    with redirect_library_output():
        from circuit_tracer import ReplacementModel
        from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
        from circuit_tracer.transcoder.activation_functions import TopK
        from transformer_lens import HookedTransformerConfig
        from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    hf = adapter.model
    config = hf.config
    if getattr(config, "model_type", "") != "gpt2":
        raise NotImplementedError(
            f"only GPT-2 is converted for circuit-tracer, not {config.model_type}"
        )
    device = adapter.device
    dtype = torch.float32
    tl_cfg = HookedTransformerConfig(
        n_layers=config.n_layer,
        d_model=config.n_embd,
        d_head=config.n_embd // config.n_head,
        n_heads=config.n_head,
        d_mlp=config.n_inner or 4 * config.n_embd,
        d_vocab=config.vocab_size,
        n_ctx=config.n_positions,
        act_fn=config.activation_function,
        normalization_type="LN",
        eps=config.layer_norm_epsilon,
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        dtype=dtype,
        device=str(device),
        default_prepend_bos=False,
    )
    layers = {}
    for layer, tc in sorted(transcoders.items()):
        architecture = tc.cfg.architecture
        if architecture == "topk":
            activation: Any = TopK(tc.cfg.k)
        elif architecture == "relu":
            activation = torch.nn.ReLU()
        else:
            raise NotImplementedError(f"no circuit-tracer activation for {architecture}")
        slt = SingleLayerTranscoder(
            tc.d_in, tc.d_sae, activation, layer, device=device, dtype=dtype
        )
        with torch.no_grad():
            slt.W_enc.copy_(tc.W_enc.detach().T)
            slt.b_enc.copy_(tc.folded_b_enc())  # our input bias folded into the encoder bias
            slt.W_dec.copy_(tc.W_dec.detach())
            slt.b_dec.copy_(tc.b_dec.detach())
        layers[layer] = slt
    transcoder_set = TranscoderSet(
        layers,
        feature_input_hook="mlp.hook_in",
        feature_output_hook="mlp.hook_out",
        scan="sparsecircuits-bench",
    )
    with redirect_library_output():
        model = ReplacementModel.from_config(
            tl_cfg, transcoder_set, backend="transformerlens", tokenizer=adapter.tokenizer
        )
        state = convert_gpt2_weights(hf, tl_cfg)
    # from_config has already wrapped each MLP and the unembedding (`old_mlp`, `old_unembed`).
    renamed = {}
    for key, value in state.items():
        key = key.replace(".mlp.", ".mlp.old_mlp.")
        if key.startswith("unembed."):
            key = "unembed.old_unembed." + key.removeprefix("unembed.")
        renamed[key] = value
    renamed.setdefault("unembed.old_unembed.b_U", torch.zeros(config.vocab_size))  # GPT-2 has none
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    params = {name for name, _ in model.named_parameters()}
    not_loaded = [
        name for name in missing if name in params and not name.startswith("transcoders.")
    ]
    if unexpected or not_loaded:
        raise RuntimeError(
            f"weight conversion mismatch: unexpected {unexpected}, missing {not_loaded}"
        )
    model.to(device)
    return model


def circuit_tracer_attribute(
    model: Any, input_ids: Tensor, batch_size: int, max_feature_nodes: int | None = None
) -> Any:
    """circuit-tracer's `attribute` on one prompt, default logit targets, every active feature
    (or its `max_feature_nodes` most influential)."""
    with redirect_library_output():
        from circuit_tracer import attribute

        return attribute(
            input_ids,
            model,
            batch_size=batch_size,
            max_feature_nodes=max_feature_nodes,
            verbose=False,
        )
