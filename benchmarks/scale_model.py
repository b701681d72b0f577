"""The GPT-2-small-sized benchmark model: random weights, 12 TopK transcoders, built locally.

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
        # transformers 5 names its tokenizer class "TokenizersBackend", which the transformers
        # 4.x of circuit-tracer's environment cannot import; both read the fast-tokenizer name
        tok_cfg = model_dir / "tokenizer_config.json"
        tok = json.loads(tok_cfg.read_text())
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok_cfg.write_text(json.dumps(tok, indent=2))
    if not (tc_dir / f"layer_{n_layers - 1:02d}" / "cfg.json").is_file():
        from benchmarks.bench_graph import make_transcoders

        adapter = load_model(model_dir, device="cpu")
        torch.manual_seed(0)
        for layer, tc in make_transcoders(adapter, k, d_sae).items():
            save_dictionary(tc, tc_dir / f"layer_{layer:02d}")
    return model_dir, tc_dir


def main() -> None:
    """Write the model and transcoders and print their folders."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--n-layers", type=int, default=12)
    p.add_argument("--d-sae", type=int, default=SCALE_D_SAE)
    p.add_argument("--k", type=int, default=SCALE_K)
    args = p.parse_args()
    model_dir, tc_dir = ensure_scale_model(args.workdir, args.n_layers, args.d_sae, args.k)
    print(model_dir)
    print(tc_dir)


if __name__ == "__main__":
    main()
