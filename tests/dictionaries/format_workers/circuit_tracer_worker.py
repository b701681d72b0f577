"""Run in circuit-tracer's environment (.venv-bench-ct): build transcoders with circuit-tracer's
own classes and save code, or load files with its own loaders, and record its outputs.

Usage: python circuit_tracer_worker.py JOBS.json, a list of `[ACTION, DIR, ARG or null]` run in one
process (circuit-tracer takes seconds to import). Inputs come from DIR/x.safetensors
(`x [n_layers, n, d_model]`); outputs go to DIR/theirs.safetensors: `acts_{l}` (dense feature
activations of layer l) and `out_{l}` (its reconstruction).

Actions: make-plt {relu,jumprelu,topk,skip} | make-clt {relu,jumprelu} | load-plt | load-clt |
load-gemma-scope FILE | load-gemma-scope-2 FILE | load-gemma-scope-2-clt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from circuit_tracer.transcoder.activation_functions import JumpReLU, TopK
from circuit_tracer.transcoder.cross_layer_transcoder import (
    CrossLayerTranscoder,
    load_clt,
    load_gemma_scope_2_clt,
)
from circuit_tracer.transcoder.single_layer_transcoder import (
    SingleLayerTranscoder,
    TranscoderSet,
    load_gemma_scope_2_transcoder,
    load_gemma_scope_transcoder,
    load_transcoder_set,
)
from safetensors.torch import load_file, save_file

CPU = torch.device("cpu")
D_TC, K = 32, 4


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.4) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "threshold" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.3 + 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def plt_outputs(transcoders, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for layer, transcoder in enumerate(transcoders):
            out[f"acts_{layer}"] = transcoder.encode(x[layer])
            out[f"out_{layer}"] = transcoder(x[layer])
    return out


def clt_outputs(clt: CrossLayerTranscoder, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for layer in range(clt.n_layers):
            out[f"acts_{layer}"] = clt.encode_layer(x[layer], layer)
        recon = clt(x)
        for layer in range(clt.n_layers):
            out[f"out_{layer}"] = recon[layer]
    return out


def run(action: str, folder: Path, arg: str | None) -> None:
    x = load_file(str(folder / "x.safetensors"))["x"]
    n_layers, _, d_model = x.shape
    if action == "make-plt":
        kind = arg
        transcoders = {}
        for layer in range(n_layers):
            if kind == "jumprelu":
                act = JumpReLU(torch.zeros(D_TC), 0.1)
            elif kind == "topk":
                act = TopK(K)
            else:
                act = F.relu
            transcoders[layer] = SingleLayerTranscoder(
                d_model,
                D_TC,
                act,
                layer,
                skip_connection=kind == "skip",
                device=CPU,
                dtype=torch.float32,
            )
            randomize(transcoders[layer], seed=10 + layer)
        tset = TranscoderSet(transcoders, "mlp.hook_in", "mlp.hook_out", scan="test")
        tset.to_safetensors(str(folder / "set"))
        config = {
            "model_kind": "transcoder_set",
            "model_name": "tiny",
            "feature_input_hook": "mlp.hook_in",
            "feature_output_hook": "mlp.hook_out",
        }
        if (
            kind == "topk"
        ):  # the config keys circuit-tracer reads for TopK sets (after 0.5.0, PR #94)
            config.update(activation="topk", k=K)
        (folder / "set" / "config.yaml").write_text(yaml.safe_dump(config))
        result = plt_outputs(tset, x)
    elif action == "make-clt":
        kind = arg
        clt = CrossLayerTranscoder(
            n_layers,
            D_TC,
            d_model,
            activation_function="jump_relu" if kind == "jumprelu" else "relu",
            lazy_decoder=False,
            lazy_encoder=False,
            device=CPU,
            dtype=torch.float32,
        )
        randomize(clt, seed=20)
        clt.to_safetensors(str(folder / "set"))
        (folder / "set" / "config.yaml").write_text(
            yaml.safe_dump(
                {
                    "model_kind": "cross_layer_transcoder",
                    "model_name": "tiny",
                    "feature_input_hook": "hook_resid_mid",
                    "feature_output_hook": "hook_mlp_out",
                }
            )
        )
        result = clt_outputs(clt, x)
    elif action == "load-plt":
        config = yaml.safe_load((folder / "set" / "config.yaml").read_text())
        paths = {
            layer: str(folder / "set" / f"layer_{layer}.safetensors") for layer in range(n_layers)
        }
        tset = load_transcoder_set(
            paths,
            "test",
            config["feature_input_hook"],
            config["feature_output_hook"],
            device=CPU,
            dtype=torch.float32,
            lazy_encoder=False,
            lazy_decoder=False,
        )
        if (
            config.get("activation") == "topk"
        ):  # 0.5.0's loader ignores `activation`; later ones build TopK(k)
            for transcoder in tset:
                transcoder.activation_function = TopK(int(config["k"]))
        result = plt_outputs(tset, x)
        result["hooks"] = torch.tensor(
            [ord(c) for c in config["feature_input_hook"] + ">" + config["feature_output_hook"]]
        )
    elif action == "load-clt":
        config = yaml.safe_load((folder / "set" / "config.yaml").read_text())
        clt = load_clt(
            str(folder / "set"),
            config["feature_input_hook"],
            config["feature_output_hook"],
            device=CPU,
            dtype=torch.float32,
            lazy_decoder=False,
            lazy_encoder=False,
        )
        result = clt_outputs(clt, x)
    elif action == "load-gemma-scope":
        transcoder = load_gemma_scope_transcoder(arg, 0, device=CPU, dtype=torch.float32)
        result = plt_outputs([transcoder], x)
    elif action == "load-gemma-scope-2":
        transcoder = load_gemma_scope_2_transcoder(arg, 0, device=CPU, dtype=torch.float32)
        result = plt_outputs([transcoder], x)
    elif action == "load-gemma-scope-2-clt":
        files = sorted(
            (folder / "set").glob("layer_*.safetensors"), key=lambda p: int(p.stem.split("_")[1])
        )
        paths = {i: str(p) for i, p in enumerate(files)}
        # its loader reads range(max(keys)) layers (one short): pass the last path twice
        paths[len(files)] = paths[len(files) - 1]
        clt = load_gemma_scope_2_clt(paths, device=CPU, dtype=torch.float32)
        result = clt_outputs(clt, x)
    else:
        raise SystemExit(f"unknown action {action}")
    save_file({k: v.contiguous() for k, v in result.items()}, str(folder / "theirs.safetensors"))


if __name__ == "__main__":
    for job in json.loads(Path(sys.argv[1]).read_text()):
        run(job[0], Path(job[1]), job[2])
