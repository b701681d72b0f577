"""Helpers the tests share (importable: `tests/` is on pytest's `pythonpath`): a deterministic
in-memory activation source for trainer tests, dictionary and transcoder builders, and
weight copies between equivalent dictionaries."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from benchmarks.bench_train_step import RepeatBatch  # noqa: F401  (re-exported for tests)

from sparsecircuits.dictionaries import DictionaryConfig, make


class SyntheticStore:
    """Yields `{hook_in: x, hook_out: f(x)}` batches; batch i depends only on (seed, i).

    `x` is sparse-ish low-rank data so a dictionary can actually learn it. `nan_at` makes batch
    `nan_at` contain NaN; `signal_at` sends SIGTERM to this process while producing that batch.
    """

    def __init__(
        self,
        d: int = 16,
        batch: int = 64,
        seed: int = 0,
        hook_in: str = "in",
        hook_out: str = "out",
        nan_at: int | None = None,
        signal_at: int | None = None,
    ):
        self.d, self.batch, self.seed = d, batch, seed
        self.hook_in, self.hook_out = hook_in, hook_out
        self.nan_at, self.signal_at = nan_at, signal_at
        self.position = 0
        g = torch.Generator().manual_seed(1234)
        self.atoms = torch.randn(4 * d, d, generator=g)
        self.mix = torch.randn(d, d, generator=g) / d**0.5

    def next_batch(self) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.position)
        codes = torch.rand(self.batch, self.atoms.shape[0], generator=g)
        codes = codes * (codes > 0.97)
        x = codes @ self.atoms
        if self.position == self.nan_at:
            x[0, 0] = float("nan")
        if self.position == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        self.position += 1
        y = torch.tanh(x @ self.mix)
        return {self.hook_in: x, self.hook_out: y}

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])


def build_dictionary(
    architecture: str = "topk",
    kind: str = "sae",
    d_in: int = 12,
    d_sae: int = 48,
    d_out: int | None = None,
    **kw,
):  # type: ignore[no-untyped-def]
    """A fresh dictionary of `architecture`/`kind` on the hooks of layer 1 (k 4 by default)."""
    hooks = (
        {"hook_in": "blocks.1.mlp.hook_in", "hook_out": "blocks.1.mlp.hook_out"}
        if kind != "sae"
        else {"hook_in": "blocks.1.hook_resid_post"}
    )
    cfg = DictionaryConfig(
        architecture=architecture,
        kind=kind,
        d_in=d_in,
        d_sae=d_sae,
        d_out=d_out,
        k=kw.pop("k", 4),
        model_name="tiny",
        **hooks,
        **kw,
    )
    return make(cfg)


def randomize_parameters(dictionary, seed: int = 0) -> None:  # type: ignore[no-untyped-def]
    """Give every trainable parameter (biases included) nonzero random values (frozen ones stay)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in dictionary.parameters():
            if not param.requires_grad:
                continue
            param.copy_(
                torch.randn(param.shape, generator=gen, dtype=torch.float64).to(param.dtype) * 0.3
            )


def topk_transcoders(adapter, d_sae: int, k: int) -> dict:  # type: ignore[no-untyped-def]
    """`{layer: TopK transcoder mlp.hook_in -> mlp.hook_out}` for every layer, seeded by layer."""
    return {
        layer: make(
            DictionaryConfig(
                architecture="topk",
                kind="transcoder",
                d_in=adapter.d_model,
                d_sae=d_sae,
                k=k,
                hook_in=f"blocks.{layer}.mlp.hook_in",
                hook_out=f"blocks.{layer}.mlp.hook_out",
                seed=layer,
            )
        )
        for layer in range(adapter.n_layers)
    }


INPUT_BY_KIND = ("mlp.hook_in", "ln2.hook_normalized", "hook_mlp_in")


def random_transcoders(
    adapter,
    seed: int,
    skip_layer: int | None = None,
    hook_in: str | None = None,
    hook_out: str | None = None,
) -> dict:
    """Transcoders for every layer but `skip_layer`, by layer % 3: TopK on the MLP's input
    `mlp.hook_in` -> `mlp.hook_out` (`hook_mlp_out` on a model with a post-MLP norm), a ReLU
    skip transcoder on `ln2.hook_normalized`, ReLU on the residual `hook_mlp_in`, the last two
    writing `hook_mlp_out`; all biases random so bias handling is tested. `hook_in` / `hook_out`
    (suffixes of `blocks.L.`) make every layer read / write there instead."""
    generator = torch.Generator().manual_seed(seed)
    first_out = "mlp.hook_out" if adapter.spec.mlp_post_norm is None else "hook_mlp_out"
    default_out = (first_out, "hook_mlp_out")
    result = {}
    for layer in range(adapter.n_layers):
        if layer == skip_layer:
            continue
        kind = layer % 3
        cfg = DictionaryConfig(
            architecture="topk" if kind == 0 else "relu",
            kind="skip_transcoder" if kind == 1 else "transcoder",
            d_in=adapter.d_model,
            d_sae=48,
            hook_in=f"blocks.{layer}.{hook_in or INPUT_BY_KIND[kind]}",
            hook_out=f"blocks.{layer}.{hook_out or default_out[kind > 0]}",
            k=6,
            seed=seed + layer,
        )
        tc = make(cfg)
        with torch.no_grad():
            tc.W_dec.mul_(3.0)
            tc.b_enc.copy_(0.1 * torch.randn(tc.b_enc.shape, generator=generator))
            tc.b_in.copy_(0.1 * torch.randn(tc.b_in.shape, generator=generator))
            tc.b_dec.copy_(0.1 * torch.randn(tc.b_dec.shape, generator=generator))
            if tc.W_skip is not None:
                tc.W_skip.copy_(0.1 * torch.randn(tc.W_skip.shape, generator=generator))
        result[layer] = tc
    return result


def copy_one_layer_clt(clt, transcoder) -> None:  # type: ignore[no-untyped-def]
    """Give a per-layer transcoder a one-layer CLT's weights (encoder, biases, its only decoder
    block, its activation's state such as JumpReLU thresholds), so the two compute the same map."""
    with torch.no_grad():
        transcoder.W_enc.copy_(clt.W_enc[0])
        transcoder.b_enc.copy_(clt.b_enc[0])
        transcoder.b_in.copy_(clt.b_in[0])
        transcoder.W_dec.copy_(clt.W_dec[0][:, 0])
        transcoder.b_dec.copy_(clt.b_dec[0])
        transcoder.activation.load_state_dict(clt.activations[0].state_dict())


def train_killed_inside(args: list[str], where: str, call: int) -> None:
    """Run `sparsecircuits ARGS` in this (child) process and SIGKILL it on the `call`-th call of
    `where`: "save_state" (a checkpoint's dictionaries written, its trainer state not yet) or
    "fsync_tree" (a checkpoint complete under its temporary name, not yet renamed)."""
    from sparsecircuits.cli import main
    from sparsecircuits.training import trainer

    original = getattr(trainer, where)
    calls = [0]

    def killing(*a: Any, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*a, **kw)

    setattr(trainer, where, killing)
    main(args)


def save_topk_transcoders(
    folder,
    n_layers: int = 3,
    d_model: int = 32,
    hook_in: str = "mlp.hook_in",
    hook_out: str = "hook_mlp_out",
):  # type: ignore[no-untyped-def]
    """Save random per-layer TopK transcoders (d_sae 40, k 4) reading `blocks.L.<hook_in>` and
    writing `blocks.L.<hook_out>` with our writer, one sub-folder a layer; return `folder`."""
    from sparsecircuits.dictionaries import save_dictionary

    for layer in range(n_layers):
        cfg = DictionaryConfig(
            architecture="topk",
            kind="transcoder",
            d_in=d_model,
            d_sae=40,
            k=4,
            hook_in=f"blocks.{layer}.{hook_in}",
            hook_out=f"blocks.{layer}.{hook_out}",
            seed=layer,
        )
        save_dictionary(make(cfg), folder / f"layer{layer}")
    return folder


def circuit_tracer_python() -> Path:
    """The interpreter of circuit-tracer's environment: `SC_BENCH_CT_PYTHON`, else the one
    `make bench-env` / `make crosscheck` builds in this checkout (`.venv-bench-ct`)."""
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("SC_BENCH_CT_PYTHON") or repo / ".venv-bench-ct" / "bin" / "python")


def load_script(path: Path) -> Any:
    """The Python file at `path` (a script under scripts/, not a package module) imported as a
    module, so tests can call its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_run_config(
    root: Path,
    model: Path,
    dictionaries: list[dict[str, Any]],
    train: dict[str, Any],
    texts: int = 200,
    seed: int = 3,
    **sizes: int,
) -> dict[str, Any]:
    """A run config (the `train` command's keys) over `model` and a text file of `texts` synthetic
    documents written to `root/data.txt`; `sizes` override the small defaults (context_size 16,
    buffer_tokens 256, contexts_per_forward 4, eval_contexts 2)."""
    from sparsecircuits.models.tiny import tokenizer_corpus

    data = root / "data.txt"
    data.write_text("\n\n".join(tokenizer_corpus(texts, seed=seed)))
    shape = {
        "context_size": 16,
        "buffer_tokens": 256,
        "contexts_per_forward": 4,
        "eval_contexts": 2,
    }
    return {
        "model": str(model),
        "dataset": str(data),
        **shape,
        **sizes,
        "dictionaries": dictionaries,
        "train": train,
    }


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch's intra-op pool at `n` threads (the suite runs at 1: conftest.py),
    restoring the count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
