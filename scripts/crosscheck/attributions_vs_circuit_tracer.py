"""Our attribution graphs against circuit-tracer's, edge by edge, on the same weights.

circuit-tracer pins an older transformers than sparsecircuits needs, so the check runs in two
environments, one step each:

    python scripts/crosscheck/attributions_vs_circuit_tracer.py dump --out DIR
        (sparsecircuits' environment) builds tiny random GPT-2 and Llama models (the test
        models of `sparsecircuits.models.tiny`) with transcoders (`CASES`: JumpReLU, ReLU skip,
        sign-keeping TopK, and a ReLU cross-layer transcoder; biases centred on real
        activations, random thresholds and skip weights), writes them in circuit-tracer's
        layout with our writer,
        reads them back with our reader, and for each prompt builds our full graph (every
        edge, no row truncation) and prunes it. DIR/<case>/ holds the model, the transcoder
        folder and per prompt the dense adjacency, nodes, pruning masks and scores.
    python scripts/crosscheck/attributions_vs_circuit_tracer.py compare --dir DIR
        (circuit-tracer's environment, make's .venv-bench-ct) loads the same model into a
        circuit-tracer `ReplacementModel` (TransformerLens backend, unprocessed weights), the
        same transcoder files with circuit-tracer's own loader, runs `attribute` on the same
        token ids, prunes with its `prune_graph` and scores with its `compute_graph_scores`,
        and prints one JSON line per model and prompt.

Definitions aligned before comparing (docs/validation.md, "Attribution graphs against
circuit-tracer"):

* token nodes: circuit-tracer's token vector is `W_E[token]`, ours the whole embedding the
  model adds (`W_E[token] + W_pos[pos]` on a model with learned positions). circuit-tracer's
  token vectors are converted to ours (`W_pos` added) before `attribute` runs; on a rotary
  model (Llama) the two agree without conversion.
* activation: circuit-tracer's TopK keeps negative values where fewer than k pre-activations are
  positive (ours zeroes them unless `topk_relu=False`); the TopK case uses `topk_relu=False`.
  circuit-tracer 0.5.0's loader reads a TopK set's files as ReLU, so its transcoders get its own
  `TopK(k)` module after loading. JumpReLU and ReLU are defined alike in both.
* everything else is the same definition in both: features and errors at the BOS are not
  nodes; feature targets are transcoder pre-activations; logit targets are de-meaned logits at
  the final norm output, the most likely tokens up to 0.95 cumulative probability (at most
  10); errors include the decoder bias and skip path.

Reported per model and prompt: `max_rel_err` per edge type (feature->feature,
embedding->feature, error->feature, feature->logit, embedding->logit, error->logit) over
entries larger than 1e-3 of their row's largest |entry|, `max_abs_err_rel_row` (largest |ours -
theirs| over the row's largest, every entry), `tolerance_share` (the largest |ours - theirs| of
a compared entry over 1e-3 of the entry plus 1e-5 of its row's largest), node and target
agreement, `replacement_score_diff` and `completeness_score_diff` (circuit-tracer's scores vs
ours), `pruned_jaccard` (nodes kept by both / kept by either at node 0.8, edge 0.98) and
`pruned_edge_jaccard`. Exit status 1 when a compared entry differs by more than 1e-3 of itself
plus 1e-5 of its row's largest (fp32 round-off on the smallest compared entries), a score
differs by more than 1e-4, or pruning keeps different nodes.

`make crosscheck` runs both. Only `dump` imports sparsecircuits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# (case, tiny family, activation, kind: per-layer "transcoder" / "skip_transcoder", or "clt")
CASES = (
    ("gpt2-jumprelu", "gpt2", "jumprelu", "transcoder"),
    ("llama-relu-skip", "llama", "relu", "skip_transcoder"),
    ("gpt2-clt-relu", "gpt2", "relu", "clt"),
    ("llama-topk-signed", "llama", "topk", "transcoder"),
)
TOPK_K = 8
PROMPTS = (
    "the cat saw the house and then",
    "Mary gave a letter to John because",
    "the scientist wrote the code for",
)
D_SAE = 96
NODE_THRESHOLD, EDGE_THRESHOLD = 0.8, 0.98
REL_TOLERANCE = 1e-3  # relative error of a matched entry
# fp32 round-off of sums with cancellation: on an entry just above ROW_FLOOR, |difference| of a few
# 1e-6 of the row's largest |entry| is already over 1e-3 relative, and where it lands depends on
# the CPU's GEMM kernels; so a matched entry passes within REL_TOLERANCE of itself plus this
# share (about 84 float32 epsilons) of its row's largest
ROW_TOLERANCE = 1e-5
ROW_FLOOR = 1e-3  # entries compared: above this share of their row's largest |entry|
SCORE_TOLERANCE = 1e-4
EDGE_TYPES = (
    ("feature", "feature"),
    ("token", "feature"),
    ("error", "feature"),
    ("feature", "logit"),
    ("token", "logit"),
    ("error", "logit"),
)
TOKEN_FILE = "tokens.json"


# ---------------------------------------------------------------- dump (sparsecircuits' side)


def _activations(adapter: Any) -> tuple[list[Tensor], list[Tensor]]:
    """Per layer, `mlp.hook_in` and `hook_mlp_out` activations `[n, d]` on the prompts' text."""
    texts = [f"{p} {q}" for p in PROMPTS for q in PROMPTS]
    ids = adapter.tokenize(texts)
    hooks = [
        f"blocks.{layer}.{h}"
        for layer in range(adapter.n_layers)
        for h in ("mlp.hook_in", "hook_mlp_out")
    ]
    with torch.no_grad():
        _, cache = adapter.run_with_cache(ids, hooks, stop_after_last=False)
    d = adapter.d_model
    ins = [cache[f"blocks.{i}.mlp.hook_in"].reshape(-1, d).float() for i in range(adapter.n_layers)]
    outs = [
        cache[f"blocks.{i}.hook_mlp_out"].reshape(-1, d).float() for i in range(adapter.n_layers)
    ]
    return ins, outs


def _transcoders(adapter: Any, architecture: str, kind: str) -> dict[int, Any]:
    """One transcoder per layer `mlp.hook_in -> hook_mlp_out`, biases centred on real
    activations, JumpReLU thresholds above a quantile of the pre-activations, TopK encoder biases
    that leave fewer than k pre-activations positive, random skip weights."""
    from sparsecircuits.dictionaries import DictionaryConfig, make

    ins, outs = _activations(adapter)
    gen = torch.Generator().manual_seed(7)
    result = {}
    for layer in range(adapter.n_layers):
        cfg = DictionaryConfig(
            architecture=architecture,
            kind=kind,
            d_in=adapter.d_model,
            d_sae=D_SAE,
            d_out=adapter.d_model,
            hook_in=f"blocks.{layer}.mlp.hook_in",
            hook_out=f"blocks.{layer}.hook_mlp_out",
            seed=100 + layer,
            # circuit-tracer's TopK: the k largest pre-activations, negative ones kept
            **({"k": TOPK_K, "topk_relu": False} if architecture == "topk" else {}),
        )
        tc = make(cfg)
        x, y = ins[layer], outs[layer]
        tc.init_biases_from_data(x, y)
        with torch.no_grad():
            tc.W_dec.mul_(5.0)  # decoder rows big enough that features matter downstream
            tc.b_enc.copy_(0.1 * torch.randn(tc.b_enc.shape, generator=gen))
            pre = (x - tc.b_in) @ tc.W_enc + tc.b_enc
            if architecture == "jumprelu":  # about a quarter of the features fire per token
                # off the sample's own values: the tools round pre-activations differently (ours
                # subtract b_in, theirs fold it into b_enc), so one exactly at a threshold would
                # fire in one tool only
                threshold = 1.01 * pre.quantile(0.75, dim=0).clamp_min(1e-3)
                tc.activation.log_threshold.copy_(threshold.log())
            if architecture == "topk":  # about 5 of 96 positive per token: TopK keeps negatives
                # (off the sample's own values, so no pre-activation is exactly 0: one tool
                # would count it active on a rounding)
                tc.b_enc.sub_(pre.quantile(0.95, dim=0) + 0.01)
            if tc.W_skip is not None:
                tc.W_skip.copy_(0.1 * torch.randn(tc.W_skip.shape, generator=gen))
        result[layer] = tc
    return result


def _clt(adapter: Any, architecture: str) -> Any:
    """A ReLU (or JumpReLU) cross-layer transcoder over every layer, `mlp.hook_in ->
    hook_mlp_out`, biases centred on real activations, random encoder biases and decoders."""
    from sparsecircuits.dictionaries import CrossLayerTranscoder, DictionaryConfig

    ins, outs = _activations(adapter)
    cfg = DictionaryConfig(
        architecture=architecture,
        kind="clt",
        n_layers=adapter.n_layers,
        d_in=adapter.d_model,
        d_sae=D_SAE // 2,
        hook_in="blocks.{layer}.mlp.hook_in",
        hook_out="blocks.{layer}.hook_mlp_out",
        seed=100,
    )
    clt = CrossLayerTranscoder(cfg)
    clt.init_biases_from_data(torch.stack(ins, 1), torch.stack(outs, 1))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        clt.b_enc.copy_(0.1 * torch.randn(clt.b_enc.shape, generator=gen))
        for W_dec in clt.W_dec:
            W_dec.copy_(0.5 * torch.randn(W_dec.shape, generator=gen))
    return clt


def dump(out: Path) -> None:
    """Write DIR/<case>/{model/, transcoders/, <prompt>.safetensors, <prompt>.json}."""
    from safetensors.torch import save_file

    from sparsecircuits.circuits.graph.build import GraphConfig, build_graph
    from sparsecircuits.circuits.replacement import ReplacementModel
    from sparsecircuits.dictionaries import formats, load_transcoders
    from sparsecircuits.dictionaries.transcoders import PerLayerTranscoders
    from sparsecircuits.models import load_model
    from sparsecircuits.models.tiny import build_tiny_model

    for case, family, architecture, kind in CASES:
        folder = out / case
        model_dir = build_tiny_model(family, folder / "model")
        adapter = load_model(model_dir, device="cpu")
        tc_dir = folder / "transcoders"
        if tc_dir.exists():
            for stale in tc_dir.iterdir():
                stale.unlink()
        if kind == "clt":
            formats.write(_clt(adapter, architecture), "circuit-tracer", tc_dir)
        else:
            made = _transcoders(adapter, architecture, kind)
            formats.write(PerLayerTranscoders(made), "circuit-tracer", tc_dir)
        transcoders = load_transcoders(tc_dir)  # both tools read the same files
        replacement = ReplacementModel(adapter, transcoders)
        config = GraphConfig(store="all", row_mass=1.0, batch_size=32)
        prompts = []
        for index, text in enumerate(PROMPTS):
            ids = replacement.tokenize(text)[0]
            graph = build_graph(replacement, ids, config)
            pruned = graph.prune(NODE_THRESHOLD, EDGE_THRESHOLD)
            replacement_score, completeness = graph.scores()
            name = f"prompt{index}"
            edge_mask = torch.zeros(graph.n_nodes, graph.n_nodes, dtype=torch.bool)
            adj = graph.adjacency
            edge_mask[
                adj.targets[pruned.edge_mask].long(), adj.sources[pruned.edge_mask].long()
            ] = True
            save_file(
                {
                    "input_ids": graph.input_ids.contiguous(),
                    "adjacency": adj.to_dense().contiguous(),
                    "active_features": graph.active_features.contiguous(),
                    "activations": graph.activations.contiguous(),
                    "logit_ids": graph.logit_ids.contiguous(),
                    "logit_probs": graph.logit_probs.contiguous(),
                    "node_mask": pruned.node_mask.contiguous(),
                    "edge_mask": edge_mask,
                },
                str(folder / f"{name}.safetensors"),
            )
            info = {
                "prompt": text,
                "n_layers": graph.n_layers,
                "replacement_score": replacement_score,
                "completeness_score": completeness,
            }
            (folder / f"{name}.json").write_text(json.dumps(info, indent=2) + "\n")
            prompts.append(name)
        status = {"case": case, "family": family, "architecture": architecture, "kind": kind}
        (folder / "case.json").write_text(json.dumps({**status, "prompts": prompts}) + "\n")
        print(f"{case}: {len(prompts)} graphs written", file=sys.stderr)


# ---------------------------------------------------------------- compare (circuit-tracer's side)


def _tokenizer(model_dir: Path) -> Any:
    """The tiny model's tokenizer, re-saved for this transformers (the tokenizer_config.json of a
    newer one names a class this one lacks) beside the model, and loaded from there, as
    TransformerLens reloads a tokenizer from its folder."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    special = "<|endoftext|>"
    folder = model_dir.parent / "tokenizer-circuit-tracer"
    PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"),
        bos_token=special,
        eos_token=special,
        pad_token=special,
    ).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def circuit_tracer_model(model_dir: Path, transcoder_dir: Path) -> tuple[Any, Any]:
    """`(circuit-tracer ReplacementModel, transformers model)` of the saved tiny model, with the
    transcoder folder read by circuit-tracer's `load_transcoder_set`."""
    import transformers
    import yaml
    from circuit_tracer import ReplacementModel
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    # TransformerLens reads a local config.json through transformers: saved again here under a
    # neutral name (one holding "llama" or "gemma" is taken for an official model) and with
    # GPT-2's n_ctx, which TransformerLens reads and newer configs no longer write
    if hf.config.model_type == "gpt2":
        hf.config.n_ctx = hf.config.n_positions
    hf.config.architectures = [type(hf).__name__]
    with tempfile.TemporaryDirectory() as work:
        name = str(Path(work) / "config")
        hf.config.save_pretrained(name)
        cfg = loading.get_pretrained_model_config(
            name, hf_cfg=hf.config.to_dict(), fold_ln=False, device="cpu", dtype=torch.float32
        )
        cfg.tokenizer_name = None
        if hf.config.model_type == "gpt2":  # TransformerLens takes GPT-2's d_mlp as 4 d_model
            cfg.d_mlp = hf.config.n_inner or 4 * hf.config.n_embd
        state = loading.get_pretrained_state_dict(name, cfg, hf, dtype=torch.float32)
    plain = HookedTransformer(cfg, move_to_device=False)
    plain.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    config = yaml.safe_load((transcoder_dir / "config.yaml").read_text())
    transcoders: Any
    if config["model_kind"] == "cross_layer_transcoder":
        transcoders = load_clt(
            str(transcoder_dir),
            feature_input_hook=config["feature_input_hook"],
            feature_output_hook=config["feature_output_hook"],
            scan="sparsecircuits-crosscheck",
            device=torch.device("cpu"),
            dtype=torch.float32,
            lazy_decoder=False,
            lazy_encoder=False,
        )
    else:
        paths = {
            int(p.stem.split("_")[1]): str(p)
            for p in sorted(transcoder_dir.glob("layer_*.safetensors"))
        }
        transcoders = load_transcoder_set(
            paths,
            scan="sparsecircuits-crosscheck",
            feature_input_hook=config["feature_input_hook"],
            feature_output_hook=config["feature_output_hook"],
            device=torch.device("cpu"),
            dtype=torch.float32,
            lazy_encoder=False,
            lazy_decoder=False,
        )
        if config.get("activation") == "topk":
            # circuit-tracer 0.5.0's loader reads every layer file as ReLU (or JumpReLU), whatever
            # config.yaml says; a TopK set gets its own TopK module here
            for transcoder in transcoders:
                transcoder.activation_function = TopK(int(config["k"]))
    model = ReplacementModel.from_config(
        cfg, transcoders, backend="transformerlens", tokenizer=_tokenizer(model_dir)
    )
    # from_config wrapped each MLP and the unembedding (`old_mlp`, `old_unembed`)
    renamed = {}
    for key, value in plain.state_dict().items():
        key = key.replace(".mlp.", ".mlp.old_mlp.")
        if key.startswith("unembed."):
            key = "unembed.old_unembed." + key.removeprefix("unembed.")
        renamed[key] = value
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    params = {name for name, _ in model.named_parameters()}
    not_loaded = [n for n in missing if n in params and not n.startswith("transcoders.")]
    if unexpected or not_loaded:
        raise SystemExit(f"weight conversion: unexpected {unexpected}, missing {not_loaded}")
    return model.eval(), hf


def _with_our_token_vectors(model: Any) -> bool:
    """Make circuit-tracer's token nodes the whole embedding (`W_E[token] + W_pos[pos]`), as
    ours are, while `model.add_positions` is true; return whether the model has learned
    positions (a rotary model is left alone)."""
    if model.cfg.positional_embedding_type != "standard":
        return False
    setup = model.setup_attribution
    model.add_positions = True

    def setup_with_positions(inputs: Any) -> Any:
        ctx = setup(inputs)
        if model.add_positions:
            n_pos = ctx.token_vectors.shape[0]
            ctx.token_vectors = ctx.token_vectors + model.W_pos[:n_pos].detach()
        return ctx

    model.setup_attribution = setup_with_positions
    return True


def _node_kinds(n_features: int, n_layers: int, n_pos: int, n_logits: int) -> list[str]:
    return (
        ["feature"] * n_features
        + ["error"] * (n_layers * n_pos)
        + ["token"] * n_pos
        + ["logit"] * n_logits
    )


def compare_graphs(
    ours: torch.Tensor, theirs: torch.Tensor, kinds: list[str]
) -> tuple[dict[str, float], dict[str, float], dict[str, int], dict[str, float]]:
    """Per edge type `source->target`: the largest relative error over entries above
    `ROW_FLOOR` of their row's largest |entry| (circuit-tracer's), the largest |difference| over
    that row maximum (every entry), the number of entries compared, and the largest share of its
    tolerance (`REL_TOLERANCE` · |entry| + `ROW_TOLERANCE` · row maximum) a compared entry uses
    (at most 1 passes)."""
    kind = torch.tensor([["feature", "error", "token", "logit"].index(k) for k in kinds])
    row_max = theirs.abs().amax(dim=1, keepdim=True)
    diff = (ours.double() - theirs.double()).abs()
    matched = theirs.abs() > ROW_FLOOR * row_max
    rel = diff / theirs.double().abs().clamp_min(1e-30)
    abs_rel_row = diff / row_max.double().clamp_min(1e-30)
    allowed = REL_TOLERANCE * theirs.double().abs() + ROW_TOLERANCE * row_max.double()
    used = diff / allowed.clamp_min(1e-30)
    max_rel, max_abs, counts, shares = {}, {}, {}, {}
    names = ["feature", "error", "token", "logit"]
    for source, target in EDGE_TYPES:
        block = (kind[:, None] == names.index(target)) & (kind[None, :] == names.index(source))
        name = f"{'embedding' if source == 'token' else source}->{target}"
        sel = block & matched
        counts[name] = int(sel.sum())
        max_rel[name] = float(rel[sel].max()) if counts[name] else 0.0
        max_abs[name] = float(abs_rel_row[block].max()) if bool(block.any()) else 0.0
        shares[name] = float(used[sel].max()) if counts[name] else 0.0
    return max_rel, max_abs, counts, shares


def _jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def compare(folder: Path) -> int:
    """Print one JSON line per model and prompt; return the exit status."""
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from safetensors.torch import load_file

    failures = 0
    cases = sorted(p.parent for p in folder.glob("*/case.json"))
    if not cases:
        print(f"no dump in {folder}; run `dump --out {folder}` first", file=sys.stderr)
        return 1
    for case_dir in cases:
        case = json.loads((case_dir / "case.json").read_text())
        model, hf = circuit_tracer_model(case_dir / "model", case_dir / "transcoders")
        positions = _with_our_token_vectors(model)
        for name in case["prompts"]:
            ours = load_file(str(case_dir / f"{name}.safetensors"))
            info = json.loads((case_dir / f"{name}.json").read_text())
            ids = ours["input_ids"]
            with torch.no_grad():
                logit_diff = float((model(ids[None]) - hf(ids[None]).logits).abs().max())
            graph = attribute(ids, model, batch_size=64, verbose=False)
            n_layers, n_pos = info["n_layers"], int(ids.numel())
            their_active = graph.active_features[graph.selected_features].cpu()
            same_features = torch.equal(their_active, ours["active_features"])
            same_targets = torch.equal(graph.logit_token_ids.cpu(), ours["logit_ids"])
            record: dict[str, Any] = {
                "model": case["case"],
                "prompt": info["prompt"],
                "n_tokens": n_pos,
                "n_features": int(ours["active_features"].shape[0]),
                "n_features_circuit_tracer": int(their_active.shape[0]),
                "same_features": same_features,
                "same_logit_targets": same_targets,
                "logit_prob_max_diff": float(
                    (graph.logit_probabilities.cpu() - ours["logit_probs"]).abs().max()
                )
                if same_targets
                else None,
                "model_logits_max_diff": logit_diff,
            }
            ok = same_features and same_targets
            if ok:
                activation_diff = (
                    graph.activation_values[graph.selected_features].cpu() - ours["activations"]
                )
                record["activation_max_diff"] = float(activation_diff.abs().max())
                kinds = _node_kinds(
                    int(their_active.shape[0]), n_layers, n_pos, int(ours["logit_ids"].numel())
                )
                theirs_adj = graph.adjacency_matrix.cpu()
                max_rel, max_abs, counts, shares = compare_graphs(
                    ours["adjacency"], theirs_adj, kinds
                )
                pruned = prune_graph(graph, NODE_THRESHOLD, EDGE_THRESHOLD)
                their_nodes = pruned.node_mask.cpu()
                their_edges = pruned.edge_mask.cpu()
                replacement, completeness = compute_graph_scores(graph)
                record.update(
                    max_rel_err=max_rel,
                    tolerance_share=shares,
                    max_abs_err_rel_row=max_abs,
                    n_compared=counts,
                    replacement_score=info["replacement_score"],
                    completeness_score=info["completeness_score"],
                    replacement_score_diff=abs(info["replacement_score"] - float(replacement)),
                    completeness_score_diff=abs(info["completeness_score"] - float(completeness)),
                    pruned_jaccard=_jaccard(ours["node_mask"], their_nodes),
                    pruned_edge_jaccard=_jaccard(ours["edge_mask"], their_edges),
                    n_pruned_nodes=int(ours["node_mask"].sum()),
                    n_pruned_nodes_circuit_tracer=int(their_nodes.sum()),
                )
                if positions:  # the same comparison with circuit-tracer's own token nodes
                    model.add_positions = False
                    raw = attribute(ids, model, batch_size=64, verbose=False).adjacency_matrix
                    model.add_positions = True
                    raw_rel, _, _, _ = compare_graphs(ours["adjacency"], raw.cpu(), kinds)
                    record["max_rel_err_unconverted_tokens"] = {
                        k: v for k, v in raw_rel.items() if k.startswith("embedding")
                    }
                ok = (
                    max(shares.values()) <= 1.0
                    and record["replacement_score_diff"] <= SCORE_TOLERANCE
                    and record["completeness_score_diff"] <= SCORE_TOLERANCE
                    and record["pruned_jaccard"] == 1.0
                )
            record["ok"] = ok
            failures += not ok
            print(json.dumps(record), flush=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("dump", help="build our graphs (sparsecircuits' environment)").add_argument(
        "--out", type=Path, required=True
    )
    sub.add_parser("compare", help="compare with circuit-tracer (its environment)").add_argument(
        "--dir", type=Path, required=True
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.step == "dump":
        dump(args.out)
        return 0
    return compare(args.dir)


if __name__ == "__main__":
    sys.exit(main())
