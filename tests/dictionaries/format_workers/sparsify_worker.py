"""Run in sparsify's environment (.venv-bench): build sparse coders with sparsify's own class and
`save_to_disk`, or load a run folder with `SparseCoder.load_many`, and record its outputs.

Usage: python sparsify_worker.py JOBS.json, a list of `[ACTION, DIR, VARIANT or null]`.
Input: DIR/x.safetensors (`x [n, d_in]`);
output: DIR/theirs.safetensors with `acts_<hookpoint>` (dense latent activations) and
`out_<hookpoint>` (the coder's output). Actions: make {sae,transcoder,skip_transcoder} | load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sparsify import SparseCoder, SparseCoderConfig

D_SAE, K = 40, 5


def outputs(coders: dict[str, SparseCoder], x: torch.Tensor) -> dict[str, torch.Tensor]:
    result = {}
    with torch.no_grad():
        for hookpoint, coder in coders.items():
            top_acts, top_indices, _ = coder.encode(x)
            dense = torch.zeros(x.shape[0], coder.num_latents).scatter_(1, top_indices, top_acts)
            result[f"acts_{hookpoint}"] = dense
            result[f"out_{hookpoint}"] = coder(x).sae_out
    return result


def run(action: str, folder: Path, arg: str | None) -> None:
    x = load_file(str(folder / "x.safetensors"))["x"]
    if action == "make":
        variant = arg
        cfg = SparseCoderConfig(
            num_latents=D_SAE,
            k=K,
            transcode=variant != "sae",
            skip_connection=variant == "skip_transcoder",
        )
        coder = SparseCoder(x.shape[1], cfg, dtype=torch.float32)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for p in coder.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        hookpoint = "layers.2.mlp" if variant != "sae" else "layers.2"
        coder.save_to_disk(folder / "run" / hookpoint)
        result = outputs({hookpoint: coder}, x)
    elif action == "load":
        result = outputs(SparseCoder.load_many(str(folder / "run"), local=True), x)
    else:
        raise SystemExit(f"unknown action {action}")
    save_file({k: v.contiguous() for k, v in result.items()}, str(folder / "theirs.safetensors"))


if __name__ == "__main__":
    for job in json.loads(Path(sys.argv[1]).read_text()):
        run(job[0], Path(job[1]), job[2])
