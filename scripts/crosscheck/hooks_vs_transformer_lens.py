"""Every hook of ours against TransformerLens's hook of the same name, on the same random weights.

TransformerLens pins an older transformers than sparsecircuits needs, so the check runs in two
environments, one step each:

    python scripts/crosscheck/hooks_vs_transformer_lens.py dump --out DIR
        (sparsecircuits' environment) builds tiny random GPT-2, GPT-NeoX, Llama and Gemma-2
        models from transformers configs (norm gains and all biases randomised, so a hook taken
        before or after a gain differs), saves each with save_pretrained and writes every hook
        of ours on a fixed prompt to DIR/<family>/ours.safetensors. A family this build cannot
        hook is recorded as "not supported by this build".
    python scripts/crosscheck/hooks_vs_transformer_lens.py compare --dir DIR
        (an environment with transformer_lens, e.g. make's .venv-bench-ct) loads the same weights
        into the transformers model there and into a HookedTransformer without weight processing
        (fold_ln, center_writing_weights, center_unembed and fold_value_biases all off, and
        use_hook_mlp_in on), runs the same prompt and prints the max abs difference of every
        hook name both define (`mlp.hook_in` / `mlp.hook_out`: the input and output of
        TransformerLens's MLP module, where circuit-tracer defines them); exit status 1 when one
        exceeds --tolerance (1e-5, fp32).

`make crosscheck` runs both. Only this file's `dump` imports sparsecircuits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("gpt2", "gpt_neox", "llama", "gemma2")
N_LAYERS, D_MODEL, N_HEADS, D_MLP, VOCAB, N_CTX = 2, 64, 4, 256, 101, 64
PROMPT_SHAPE = (2, 12)
TOLERANCE = 1e-5
NOT_SUPPORTED = "not supported by this build"


def hf_config(family: str) -> Any:
    """The transformers config of the tiny `family` model, spelt for the installed transformers
    (rotary settings moved into `rope_parameters` in transformers 5)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    d_head = D_MODEL // N_HEADS

    def rope(**extra: float) -> dict[str, Any]:
        if major >= 5:
            return {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, **extra}}
        renamed = {"rotary_pct" if k == "partial_rotary_factor" else k: v for k, v in extra.items()}
        return {"rope_theta": 10000.0, **renamed}

    common: dict[str, Any] = {
        "vocab_size": VOCAB,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "initializer_range": 0.1,
    }
    if family == "gpt2":  # TransformerLens reads GPT-2's d_mlp as 4 * d_model, and n_ctx
        return transformers.GPT2Config(
            n_layer=N_LAYERS,
            n_embd=D_MODEL,
            n_head=N_HEADS,
            n_positions=N_CTX,
            n_ctx=N_CTX,
            **common,
        )
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(
            num_hidden_layers=N_LAYERS,
            hidden_size=D_MODEL,
            num_attention_heads=N_HEADS,
            intermediate_size=D_MLP,
            max_position_embeddings=N_CTX,
            use_parallel_residual=True,
            attention_bias=True,
            tie_word_embeddings=False,
            **rope(partial_rotary_factor=0.25),
            **common,
        )
    if family == "llama":
        return transformers.LlamaConfig(
            num_hidden_layers=N_LAYERS,
            hidden_size=D_MODEL,
            num_attention_heads=N_HEADS,
            num_key_value_heads=N_HEADS // 2,
            intermediate_size=D_MLP,
            max_position_embeddings=N_CTX,
            tie_word_embeddings=False,
            **rope(),
            **common,
        )
    if family == "gemma2":
        return transformers.Gemma2Config(
            num_hidden_layers=N_LAYERS,
            hidden_size=D_MODEL,
            num_attention_heads=N_HEADS,
            num_key_value_heads=N_HEADS // 2,
            head_dim=d_head,
            query_pre_attn_scalar=d_head,
            intermediate_size=D_MLP,
            max_position_embeddings=N_CTX,
            # wider than the prompt: TransformerLens and transformers order sliding and global
            # layers differently, which is not what this check is about
            sliding_window=N_CTX,
            **rope(),
            **common,
        )
    raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")


def prompt() -> torch.Tensor:
    """The fixed token ids `[2, 12]` every family runs."""
    return torch.randint(1, VOCAB, PROMPT_SHAPE, generator=torch.Generator().manual_seed(0))


def _randomise_norms_and_biases(model: torch.nn.Module, gemma: bool) -> None:
    # transformers starts gains at 1 (Gemma's stored 1 + w at w = 0) and biases at 0, under which
    # a hook before a gain and one after it would agree.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim != 1:
                continue
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("bias"):
                param.copy_(0.1 * noise)
            else:  # a norm gain
                param.copy_((0.0 if gemma else 1.0) + 0.2 * noise)


# ---------------------------------------------------------------- dump (sparsecircuits' side)


def dump(out: Path) -> None:
    """Write DIR/<family>/{hf/, ours.safetensors, status.json} for every family."""
    import transformers
    from safetensors.torch import save_file

    from sparsecircuits.errors import SparseCircuitsError
    from sparsecircuits.models import ModelAdapter

    ids = prompt()
    for family in FAMILIES:
        folder = out / family
        folder.mkdir(parents=True, exist_ok=True)
        config = hf_config(family)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        _randomise_norms_and_biases(model, gemma=family == "gemma2")
        model.eval()
        model.save_pretrained(folder / "hf")
        try:
            adapter = ModelAdapter(model, tokenizer=None, name=family)
        except SparseCircuitsError as exc:
            status = {"family": family, "status": f"{NOT_SUPPORTED}: {exc}"}
            (folder / "status.json").write_text(json.dumps(status, indent=2) + "\n")
            print(f"{family}: {status['status']}")
            continue
        with torch.no_grad():
            logits, cache = adapter.run_with_cache(ids, adapter.hook_names(), stop_after_last=False)
        assert logits is not None
        tensors = {name: t.clone() for name, t in cache.items()}
        tensors["logits"] = logits.contiguous()
        tensors["input_ids"] = ids
        save_file(tensors, str(folder / "ours.safetensors"))
        status = {"family": family, "status": "ok", "transformers": transformers.__version__}
        (folder / "status.json").write_text(json.dumps(status, indent=2) + "\n")
        print(f"{family}: {len(cache)} hooks written")


# ---------------------------------------------------------------- compare (TransformerLens' side)


def _hf_model(family: str, folder: Path) -> Any:
    """The saved weights in this environment's transformers model of the family."""
    import transformers
    from safetensors.torch import load_file

    model = transformers.AutoModelForCausalLM.from_config(
        hf_config(family), dtype=torch.float32, attn_implementation="eager"
    )
    state = load_file(str(folder / "hf" / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise SystemExit(
            f"{family}: saved weights do not fit: missing {missing}, extra {unexpected}"
        )
    model.tie_weights()
    return model.eval()


def _transformer_lens_model(family: str, hf_model: Any, work: Path) -> Any:
    """A HookedTransformer on `hf_model`'s weights, unprocessed, with hook_mlp_in enabled."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    if family == "gemma2":
        # TransformerLens reads Gemma-2's architecture only from its official names: take
        # gemma-2-2b's and give it this model's sizes
        name = "google/gemma-2-2b"
        base = loading.get_pretrained_model_config(
            name, fold_ln=False, device="cpu", dtype=torch.float32
        ).to_dict()
        base.update(
            d_model=D_MODEL,
            d_head=D_MODEL // N_HEADS,
            rotary_dim=D_MODEL // N_HEADS,
            n_heads=N_HEADS,
            n_key_value_heads=N_HEADS // 2,
            d_mlp=D_MLP,
            n_layers=N_LAYERS,
            n_ctx=N_CTX,
            d_vocab=VOCAB,
            window_size=N_CTX,
            attn_types=["global", "local"] * (N_LAYERS // 2),
            eps=hf_model.config.rms_norm_eps,
        )
        for derived in ("n_params", "d_vocab_out", "attn_scale"):  # recomputed from the sizes
            base.pop(derived, None)
        cfg = HookedTransformerConfig.from_dict(base)
    else:
        # a local folder's config.json is read through transformers (the folder name must not
        # contain "llama" or "gemma", which TransformerLens takes as official names)
        name = str(work / f"config_{FAMILIES.index(family)}")
        hf_model.config.architectures = [type(hf_model).__name__]
        hf_model.config.save_pretrained(name)
        cfg = loading.get_pretrained_model_config(
            name,
            hf_cfg=hf_model.config.to_dict(),
            fold_ln=False,
            device="cpu",
            dtype=torch.float32,
        )
    state_dict = loading.get_pretrained_state_dict(name, cfg, hf_model, dtype=torch.float32)
    cfg.tokenizer_name = None  # token ids only: no tokenizer to load
    model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    model.set_use_hook_mlp_in(True)
    return model.eval()


def _run_with_mlp_module_hooks(model: Any, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """TransformerLens's logits and cache, plus `blocks.L.mlp.hook_in` / `mlp.hook_out`: the input
    and output of its MLP module, where circuit-tracer wraps the MLP to define them."""
    extra: dict[str, torch.Tensor] = {}
    handles = []
    for layer, block in enumerate(model.blocks):

        def keep(_module: Any, args: Any, output: torch.Tensor, layer: int = layer) -> None:
            extra[f"blocks.{layer}.mlp.hook_in"] = args[0]
            extra[f"blocks.{layer}.mlp.hook_out"] = output

        handles.append(block.mlp.register_forward_hook(keep))
    try:
        logits, cache = model.run_with_cache(ids)
    finally:
        for handle in handles:
            handle.remove()
    return logits, {**dict(cache.items()), **extra}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def compare(folder: Path, tolerance: float) -> int:
    """Print `family hook max_abs_diff` for every hook both define; return the exit status."""
    import tempfile

    from safetensors.torch import load_file

    failures = 0
    report: dict[str, Any] = {}
    for family in FAMILIES:
        status_path = folder / family / "status.json"
        if not status_path.is_file():
            print(f"{family}: no dump in {folder / family}; run `dump` first")
            failures += 1
            continue
        status = json.loads(status_path.read_text())["status"]
        hf_model = _hf_model(family, folder / family)
        with tempfile.TemporaryDirectory() as work:
            model = _transformer_lens_model(family, hf_model, Path(work))
        ids = prompt()
        with torch.no_grad():
            hf_logits = hf_model(ids).logits
            tl_logits, cache = _run_with_mlp_module_hooks(model, ids)
        # the two references agree with each other first, or the comparison means nothing
        diffs = {"logits (TransformerLens vs transformers)": _max_diff(tl_logits, hf_logits)}
        if status != "ok":  # still shows whether the TransformerLens side is ready for it
            ((name, diff),) = diffs.items()
            print(f"{family}: {status}")
            print(f"{family:9s} {name:44s} {diff:.3e} (not counted)")
            report[family] = {"status": status, "max_abs_diff": diffs}
            continue
        ours = load_file(str(folder / family / "ours.safetensors"))
        if not torch.equal(ours.pop("input_ids"), ids):
            raise SystemExit(f"{family}: the dump ran another prompt; dump again")
        our_logits = ours.pop("logits")
        diffs["logits (ours vs transformers)"] = _max_diff(our_logits, hf_logits)
        diffs["logits (ours vs TransformerLens)"] = _max_diff(our_logits, tl_logits)
        scales = {}
        only_ours = []
        for name, act in ours.items():
            if name not in cache:
                only_ours.append(name)
                continue
            theirs = cache[name]
            if theirs.shape != act.shape:
                diffs[name] = float("inf")
                print(f"{family} {name}: shape {tuple(act.shape)} vs {tuple(theirs.shape)}")
                continue
            diffs[name] = _max_diff(act, theirs)
            scales[name] = float(act.abs().max())
        for name, diff in diffs.items():
            verdict = "ok" if diff <= tolerance else "FAIL"
            failures += verdict == "FAIL"
            scale = f"(max |act| {scales[name]:.2f})" if name in scales else ""
            print(f"{family:9s} {name:44s} {diff:.3e} {verdict} {scale}")
        kinds = sorted({n.split(".", 2)[2] if n.startswith("blocks.") else n for n in only_ours})
        print(f"{family:9s} ours only (no TransformerLens name): {', '.join(kinds) or 'none'}")
        report[family] = {
            "status": "ok",
            "max_abs_diff": diffs,
            "max_abs_activation": scales,
            "ours_only": kinds,
        }
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{failures} comparison(s) over {tolerance:g}" if failures else "all hooks agree")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("dump", help="write our hooks (sparsecircuits' environment)").add_argument(
        "--out", type=Path, required=True
    )
    cmp = sub.add_parser("compare", help="compare with TransformerLens (its environment)")
    cmp.add_argument("--dir", type=Path, required=True)
    cmp.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args(argv)
    if args.step == "dump":
        dump(args.out)
        return 0
    return compare(args.dir, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
