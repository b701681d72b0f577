"""Memory model of `sparsecircuits trace`: what a graph of a given model and transcoder set needs.

    python benchmarks/memory_model.py                       # Gemma-2-2B, 16k transcoders
    python benchmarks/memory_model.py --check WORKDIR       # measure a random Gemma-2

Components (bytes; `s` the compute dtype's size):

* weights: the Hugging Face model (`n_params * s`) plus the replacement model's per-head copies
  of the attention weights (`4 * L * d * H * d_head * s`; K and V expanded to every query head);
  Gemma's sqrt(d) embedding scale is applied to the prompt's rows only, so it adds no copy;
* transcoders: `L * 2 * d * d_sae * s`, memory-mapped from their files (one copy: the file's
  pages; the clean run reads every encoder and decoder row once);
* clean run: per layer about `10 * T * d + 3 * T * d_sae` numbers (residuals, errors, values,
  pre-activations, activations, gains) and the patterns `H * T^2`;
* per batch of B targets over a prefix of P tokens: the gradients at every MLP output
  `(L + 1) * P * B * d`, three attention temporaries `3 * P * B * d`, the row block `B * W`
  floats (W <= features + (L + 1) * T);
* the graph: 12 bytes per stored edge (`store="influential"`: the kept rows only; with
  `max_feature_nodes` N: N rows of about `row_nnz` edges each).

`--check` builds a random Gemma-2 of Gemma-2-2B's width (d 2304, 8 heads of 256 with
4 key/value heads, d_mlp 9216, vocab 256,000; fewer layers so it fits this machine), TopK
transcoders of 16,384 features, traces one prompt with a feature budget and prints the measured
peak RSS beside the model's prediction.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass
class Shape:
    """A model and transcoder set: layers, widths, heads, vocabulary, features."""

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    vocab: int
    d_sae: int
    n_params: float


GEMMA_2_2B = Shape(26, 2304, 8, 256, 9216, 256_000, 16_384, 2.61e9)
GIB = 2**30


def predict(
    shape: Shape,
    tokens: int,
    dtype_bytes: int = 4,
    batch: int = 64,
    feature_nodes: int = 8192,
    row_nnz: int = 4000,
) -> dict[str, float]:
    """Predicted GiB per component (module docstring) for a `tokens`-token prompt."""
    L, d, s, T = shape.n_layers, shape.d_model, dtype_bytes, tokens
    weights = shape.n_params * s + 4 * L * d * shape.n_heads * shape.d_head * s
    transcoders = L * 2 * d * shape.d_sae * s
    clean = L * ((10 * T * d + 3 * T * shape.d_sae) * s + shape.n_heads * T * T * s)
    width = min(shape.d_sae * L, 64 * L * T) + (L + 1) * T
    per_batch = (L + 4) * T * batch * d * s + batch * width * 4
    graph = feature_nodes * row_nnz * 12
    parts = {
        "weights": weights,
        "transcoders": transcoders,
        "clean_run": clean,
        "per_batch": per_batch,
        "graph": graph,
    }
    return {k: v / GIB for k, v in parts.items()} | {"total": sum(parts.values()) / GIB}


def check(workdir: Path, n_layers: int, tokens: int, budget: int) -> dict:
    """Build (once) and trace a random Gemma-2 of Gemma-2-2B's width (fewer layers); return the
    measured peak RSS beside the prediction."""
    import torch

    from benchmarks.bench_graph import make_transcoders
    from benchmarks.scale_model import ensure_gemma2_width_model
    from sparsecircuits.circuits.graph.build import GraphConfig, build_graph
    from sparsecircuits.circuits.replacement import ReplacementModel
    from sparsecircuits.dictionaries import load_transcoders
    from sparsecircuits.dictionaries.io import save_dictionary
    from sparsecircuits.models import load_model

    g = GEMMA_2_2B
    model_dir = ensure_gemma2_width_model(workdir, n_layers)
    tc_dir = workdir / f"gemma2-2b-width-{n_layers}l-tc{g.d_sae}"
    if not tc_dir.is_dir():
        adapter = load_model(model_dir, device="cpu")
        for layer, tc in make_transcoders(adapter, 64, g.d_sae).items():
            save_dictionary(tc, tc_dir / f"layer_{layer:02d}")
        del adapter
    start = time.perf_counter()
    adapter = load_model(model_dir, device="cpu")
    replacement = ReplacementModel(adapter, load_transcoders(tc_dir, device="cpu"))
    loaded_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ids = torch.randint(1, 500, (tokens,), generator=torch.Generator().manual_seed(0))
    ids[0] = 0
    graph = build_graph(replacement, ids, GraphConfig(max_feature_nodes=budget))
    shape = Shape(n_layers, g.d_model, g.n_heads, g.d_head, g.d_mlp, g.vocab, g.d_sae, 0.0)
    shape.n_params = float(sum(p.numel() for p in adapter.model.parameters()))
    row_nnz = graph.adjacency.nnz / max(graph.n_features, 1)
    return {
        "n_layers": n_layers,
        "tokens": tokens,
        "max_feature_nodes": budget,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_after_load_gib": round(loaded_mb / 1024, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "predicted_gib": {
            k: round(v, 2)
            for k, v in predict(
                shape, tokens, feature_nodes=graph.n_features, row_nnz=int(row_nnz)
            ).items()
        },
    }


def main() -> None:
    """Print the Gemma-2-2B table, or run `--check`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", type=Path, help="work folder: build and trace a random model")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--max-feature-nodes", type=int, default=2048)
    args = p.parse_args()
    if args.check:
        args.check.mkdir(parents=True, exist_ok=True)
        print(json.dumps(check(args.check, args.n_layers, args.tokens, args.max_feature_nodes)))
        return
    for dtype, size in (("fp32", 4), ("bf16", 2)):
        for tokens in (32, 128, 512):
            row = predict(GEMMA_2_2B, tokens, size)
            print(
                json.dumps(
                    {"dtype": dtype, "tokens": tokens, **{k: round(v, 2) for k, v in row.items()}}
                )
            )


if __name__ == "__main__":
    main()
