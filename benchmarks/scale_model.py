"""The GPT-2-small-sized benchmark model: random weights, 12 TopK transcoders, built locally.

`ensure_gemma2_width_model(workdir, n_layers)` writes a random Gemma-2 of Gemma-2-2B's shape
(the GPU benchmarks' model; `python -m benchmarks.scale_model W --gemma2-width --n-layers N`).
`ensure_scale_model(workdir)` writes (once) a GPT-2 of GPT-2 small's shape (12 layers, d_model
768, 12 heads, d_mlp 3072, vocab 50257; random weights from `build_tiny_model`, which uses a
`transformers.GPT2Config`) and one TopK transcoder per layer (24,576 features, k 64, random
init with biases centred on the model's activations), saved in our dictionary format. Both the
graph benchmark and `python -m benchmarks.scale_model` (which prints the two folders) use it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SCALE_MODEL = "gpt2-small-size"
SCALE_SHAPE = {"n_layers": 12, "d_model": 768, "n_heads": 12, "vocab_size": 50257}
SCALE_D_SAE = 24576
SCALE_K = 64


def ensure_scale_model(
    workdir: Path, n_layers: int = 12, d_sae: int = SCALE_D_SAE, k: int = SCALE_K
) -> tuple[Path, Path]:
    """Return `(model folder, transcoder folder)` under `workdir`, writing them if absent."""
    from sparsecircuits.dictionaries.io import save_dictionary
    from sparsecircuits.models import load_model
    from sparsecircuits.models.tiny import build_tiny_model

    shape = {**SCALE_SHAPE, "n_layers": n_layers}
    name = f"{SCALE_MODEL}-{n_layers}l-mlp{4 * shape['d_model']}"
    model_dir = workdir / name
    tc_dir = workdir / f"{name}-tc{d_sae}-k{k}"
    if not (model_dir / "config.json").is_file():
        from transformers import AutoConfig, AutoModelForCausalLM

        build_tiny_model("gpt2", model_dir, max_context=1024, **shape)  # tokenizer and config
        config = AutoConfig.from_pretrained(model_dir)
        config.n_inner = 4 * shape["d_model"]  # GPT-2 small's d_mlp 3072 (tiny models use 2x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(model_dir)
        fast_tokenizer_class(model_dir)
    if not (tc_dir / f"layer_{n_layers - 1:02d}" / "cfg.json").is_file():
        from benchmarks.bench_graph import make_transcoders

        adapter = load_model(model_dir, device="cpu")
        torch.manual_seed(0)
        for layer, tc in make_transcoders(adapter, k, d_sae).items():
            save_dictionary(tc, tc_dir / f"layer_{layer:02d}")
    return model_dir, tc_dir


def fast_tokenizer_class(model_dir: Path) -> None:
    """Name the tokenizer class "PreTrainedTokenizerFast": transformers 5 writes
    "TokenizersBackend", which the transformers 4.x of circuit-tracer's environment cannot
    import; both read the fast-tokenizer name."""
    tok_cfg = model_dir / "tokenizer_config.json"
    tok = json.loads(tok_cfg.read_text())
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg.write_text(json.dumps(tok, indent=2))


# Gemma-2-2B's config.json (d_model 2304, 8 query heads of 256 over 4 key/value heads, d_mlp
# 9216, vocabulary 256,000); `ensure_gemma2_width_model` takes its layer count as an argument.
GEMMA2_2B = {
    "hidden_size": 2304,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "intermediate_size": 9216,
    "vocab_size": 256_000,
    "n_layers": 26,
}


def ensure_gemma2_width_model(workdir: Path, n_layers: int = GEMMA2_2B["n_layers"]) -> Path:
    """Return the folder of a random-weight Gemma-2 of Gemma-2-2B's shape with `n_layers` layers
    (all 26 by default) under `workdir`, writing it once (fp32, seed 0; the tokenizer is a tiny
    byte-level BPE of 512 tokens, so prompts use the first 512 ids)."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    from sparsecircuits.models.tiny import build_tiny_model

    g = GEMMA2_2B
    model_dir = workdir / f"gemma2-2b-width-{n_layers}l"
    written = model_dir / "config.json"
    done = written.is_file() and any(model_dir.glob("*.safetensors"))
    if done and json.loads(written.read_text()).get("hidden_size") == g["hidden_size"]:
        return model_dir
    build_tiny_model("gemma2", model_dir, vocab_size=512, n_layers=1, d_model=32, n_heads=4)
    config = Gemma2Config(
        num_hidden_layers=n_layers,
        hidden_size=g["hidden_size"],
        num_attention_heads=g["num_attention_heads"],
        num_key_value_heads=g["num_key_value_heads"],
        head_dim=g["head_dim"],
        intermediate_size=g["intermediate_size"],
        vocab_size=g["vocab_size"],
        query_pre_attn_scalar=g["head_dim"],
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        sliding_window=4096,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    for stale in model_dir.glob("*.safetensors"):
        stale.unlink()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(model_dir)
    fast_tokenizer_class(model_dir)
    return model_dir


def main() -> None:
    """Write the model and transcoders and print their folders."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--n-layers", type=int, default=12)
    p.add_argument("--d-sae", type=int, default=SCALE_D_SAE)
    p.add_argument("--k", type=int, default=SCALE_K)
    p.add_argument(
        "--gemma2-width",
        action="store_true",
        help="write a random Gemma-2 of Gemma-2-2B's shape (--n-layers, default 26) instead, "
        "and print its folder",
    )
    args = p.parse_args()
    if args.gemma2_width:
        layers = args.n_layers if args.n_layers != 12 else GEMMA2_2B["n_layers"]
        print(ensure_gemma2_width_model(args.workdir, layers))
        return
    model_dir, tc_dir = ensure_scale_model(args.workdir, args.n_layers, args.d_sae, args.k)
    print(model_dir)
    print(tc_dir)


if __name__ == "__main__":
    main()
