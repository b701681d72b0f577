"""Where a TopK train step spends its time: a torch.profiler breakdown plus kernel alternatives.

For our TopK transcoder step (the same `Trainer` step as `bench_train_step`), records where
the step's time goes by phase (`train_step_phases`: encoder GEMM, top-k selection, sparse
decode, encoder and decoder backward, gradient clipping, Adam, decoder-norm handling, the rest)
at d_sae 4k, 16k and 65k, k 32 and 128, the self time of the heaviest operators over a few
profiled steps (`train_step_breakdown`), and times candidate replacements of the hot kernels side by side on the same tensors
(`kernel_alternative`), so a kernel change can be argued from numbers:

* top-k selection: `torch.topk(sorted=False)` vs a threshold from `kthvalue`;
* encoder backward input gradient: `embedding_bag` over `W_enc.T.contiguous()` (a copy of the
  encoder every step) vs the same with a cached transpose vs a CSR sparse-dense matmul;
* weight gradients: a COO `torch.sparse.mm` built per call (what `_scatter_outer` does, twice per
  step with the same indices) vs a CSR matrix built once and reused, vs sort + `index_add_`;
* the optimizer: `torch.optim.Adam` default (foreach) vs `fused=True`;
* the encoder forward: bias via `addmm` vs a bias row in the GEMM; the whole `[n, d_sae]`
  pre-activation then top-k vs exact chunked variants (row blocks; column blocks + a final
  top-k over the candidates) that never hold `[n, d_sae]` (time and peak RSS growth).

And the whole step with each TopK selection mode (`train_step_variant`: fp32 top-k vs the
verified bf16 candidate selection, at d_sae 4k and 16k), with the bf16 selection's fallback
rate and its agreement with the fp32 top-k on the real batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.bench_train_step import (
    BATCH_TOKENS,
    LAYER,
    harvest_batch,
    our_step,
    selection_and_precision,
)
from benchmarks.common import BenchOptions, emit, log, time_interleaved

TOP_OPS = 12


def profile_step(step: Callable[[], None], n_steps: int) -> list[dict[str, Any]]:
    """Self CPU (or CUDA) time per operator over `n_steps` calls of `step`, heaviest first."""
    from torch.profiler import ProfilerActivity, profile

    step()
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(n_steps):
            step()
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", 0) or 0
        rows.append(
            {
                "op": event.key,
                "self_cpu_ms": event.self_cpu_time_total / 1000 / n_steps,
                "self_device_ms": device_us / 1000 / n_steps,
                "calls": event.count // n_steps,
            }
        )
    key = "self_device_ms" if torch.cuda.is_available() else "self_cpu_ms"
    rows.sort(key=lambda r: r[key], reverse=True)
    total = sum(r[key] for r in rows)
    for r in rows:
        r["share"] = round(r[key] / total, 3) if total else 0.0
        r["self_cpu_ms"] = round(r["self_cpu_ms"], 3)
        r["self_device_ms"] = round(r["self_device_ms"], 3)
    return rows[:TOP_OPS]


# Phases of `train_step_phases`: (phase, how it is found in the profile). The trainer's own
# calls are wrapped in `record_function` labels by `_label_step`; autograd Functions and
# operators are matched by name; `encode: GEMM` is every `addmm`/`mm` inside `_TopKEncode`.
PHASES = (
    "encode: GEMM",
    "encode: top-k selection and rescoring",
    "decode (sparse, embedding bag)",
    "loss and metrics (forward)",
    "backward: encoder (sparse W_enc, b_enc grads)",
    "backward: decoder (sparse W_dec grad, gather-dot)",
    "backward: loss and gradient accumulation",
    "decoder: remove parallel grads",
    "grad clip",
    "Adam",
    "decoder: renormalise rows",
    "zero_grad",
    "other (dead-latent counter, schedule, batch)",
)


def _label_step(trainer: Any) -> Callable[..., Any]:
    """Wrap the trainer's per-step calls on its one dictionary in `record_function` labels
    (instance attributes; the trainer's code is unchanged); returns the labelled
    `clip_grad_norm_` to install while profiling."""
    from torch.autograd.profiler import record_function

    def labelled(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            with record_function(label):
                return fn(*args, **kwargs)

        return run

    (dictionary,) = trainer.dictionaries.values()
    (optimizer,) = trainer.optimizers.values()
    dictionary.loss = labelled("phase:loss", dictionary.loss)
    dictionary.before_optimizer_step = labelled(
        "decoder: remove parallel grads", dictionary.before_optimizer_step
    )
    dictionary.after_optimizer_step = labelled(
        "decoder: renormalise rows", dictionary.after_optimizer_step
    )
    optimizer.step = labelled("Adam", optimizer.step)
    optimizer.zero_grad = labelled("zero_grad", optimizer.zero_grad)
    return labelled("grad clip", torch.nn.utils.clip_grad_norm_)


def _sum_named(event: Any, names: tuple[str, ...]) -> float:
    """CPU time (µs) of the outermost descendants of `event` whose name is in `names`."""
    total = 0.0
    for child in event.cpu_children:
        if child.name in names:
            total += child.cpu_time_total
        else:
            total += _sum_named(child, names)
    return total


def _find(events: list[Any], name: str) -> list[Any]:
    """The outermost events called `name` in the trees under `events`."""
    found = []
    for event in events:
        if event.name == name:
            found.append(event)
        else:
            found.extend(_find(event.cpu_children, name))
    return found


def phase_times(trainer: Any, step: Callable[[], None], n_steps: int) -> dict[str, float]:
    """Milliseconds per step in each of `PHASES` (plus `"step"`, the wall time of a profiled
    step) over `n_steps` profiled calls of `step`, a one-step closure of `trainer`."""
    from torch.profiler import ProfilerActivity, profile

    labelled_clip = _label_step(trainer)
    original_clip = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = labelled_clip
    try:
        step()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(n_steps):
                step()
        wall = (time.perf_counter() - start) * 1e6
    finally:
        torch.nn.utils.clip_grad_norm_ = original_clip  # type: ignore[assignment]
    roots = [e for e in prof.events() if e.cpu_parent is None]
    us = dict.fromkeys(PHASES, 0.0)
    gemm = ("aten::addmm", "aten::mm")
    for event in roots:
        name = event.name
        if name == "phase:loss":
            encodes = _find([event], "_TopKEncode")
            decodes = _find([event], "_SparseDecode")
            encode = sum(e.cpu_time_total for e in encodes)
            encode_gemm = sum(_sum_named(e, gemm) for e in encodes)
            decode = sum(e.cpu_time_total for e in decodes)
            us["encode: GEMM"] += encode_gemm
            us["encode: top-k selection and rescoring"] += encode - encode_gemm
            us["decode (sparse, embedding bag)"] += decode
            us["loss and metrics (forward)"] += event.cpu_time_total - encode - decode
        elif name.startswith("autograd::engine::evaluate_function"):
            if "_TopKEncodeBackward" in name:
                us["backward: encoder (sparse W_enc, b_enc grads)"] += event.cpu_time_total
            elif "_SparseDecodeBackward" in name:
                us["backward: decoder (sparse W_dec grad, gather-dot)"] += event.cpu_time_total
            else:
                us["backward: loss and gradient accumulation"] += event.cpu_time_total
        elif name in us:
            us[name] += event.cpu_time_total
    us["other (dead-latent counter, schedule, batch)"] = max(0.0, wall - sum(us.values()))
    out = {phase: round(t / 1000 / n_steps, 2) for phase, t in us.items()}
    out["step"] = round(wall / 1000 / n_steps, 2)
    return out


def _coo_outer(
    indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, d_sae: int
) -> torch.Tensor:
    n, k = indices.shape
    token = torch.arange(n, device=indices.device).repeat_interleave(k)
    sparse = torch.sparse_coo_tensor(
        torch.stack([indices.reshape(-1), token]),
        weights.reshape(-1),
        (d_sae, n),
        check_invariants=False,
    )
    return torch.sparse.mm(sparse, rows)


def _quickselect_bf16(scores: torch.Tensor, k: int) -> None:
    """The fp32 kernel's quickselect thresholds on bf16 bits: the alternative to the histogram
    thresholds `cpu_topk.row_topk` uses for bf16 rows."""
    import numpy as np

    from sparsecircuits.dictionaries import cpu_topk

    bits = scores.contiguous().view(torch.int16).numpy().view(np.uint16)
    keys, idx = np.empty((scores.shape[0], k), np.int32), np.empty((scores.shape[0], k), np.int64)
    with cpu_topk._launch() as numba_kernels:
        numba_kernels.topk_rows(bits, k, cpu_topk.segment_length(scores.shape[1], k), keys, idx)


def _csr_by_latent(
    indices: torch.Tensor, d_sae: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort order, crow pointers and token columns of the `[d_sae, n]` pattern (built once)."""
    n, k = indices.shape
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=d_sae)
    crow = torch.zeros(d_sae + 1, dtype=torch.int64, device=indices.device)
    crow[1:] = counts.cumsum(0)
    cols = (order // k).to(torch.int64)
    return order, crow, cols


def _csr_outer(
    pattern: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    weights: torch.Tensor,
    rows: torch.Tensor,
    d_sae: int,
) -> torch.Tensor:
    order, crow, cols = pattern
    values = weights.reshape(-1)[order]
    csr = torch.sparse_csr_tensor(crow, cols, values, (d_sae, rows.shape[0]))
    return csr @ rows


def _index_add_outer(
    indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, d_sae: int
) -> torch.Tensor:
    n, k = indices.shape
    contributions = (weights.unsqueeze(2) * rows.unsqueeze(1)).reshape(n * k, -1)
    return rows.new_zeros(d_sae, rows.shape[1]).index_add_(0, indices.reshape(-1), contributions)


def _encode_full(xs: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    return torch.addmm(b, xs, W).topk(k, dim=-1, sorted=False).indices


def _encode_row_chunks(
    xs: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int, rows: int
) -> torch.Tensor:
    """Exact top-k indices computed `rows` tokens at a time: never holds `[n, d_sae]`."""
    out = torch.empty(xs.shape[0], k, dtype=torch.int64, device=xs.device)
    for start in range(0, xs.shape[0], rows):
        chunk = torch.addmm(b, xs[start : start + rows], W)
        out[start : start + rows] = chunk.topk(k, dim=-1, sorted=False).indices
    return out


def _encode_col_chunks(
    xs: torch.Tensor, W: torch.Tensor, b: torch.Tensor, k: int, cols: int
) -> torch.Tensor:
    """Exact top-k: per column block keep its top k, then the top k of the candidates."""
    values, indices = [], []
    for start in range(0, W.shape[1], cols):
        block = torch.addmm(b[start : start + cols], xs, W[:, start : start + cols])
        v, i = block.topk(k, dim=-1, sorted=False)
        values.append(v)
        indices.append(i + start)
    best = torch.cat(values, 1).topk(k, dim=-1, sorted=False).indices
    return torch.cat(indices, 1).gather(1, best)


def _peak_delta_mb(fn: Callable[[], Any]) -> float:
    from benchmarks.common import current_rss_mb, peak_rss_mb, reset_peak_rss

    reset_peak_rss()
    before = current_rss_mb()
    fn()
    return round(peak_rss_mb() - before, 1)


def alternatives(d_sae: int, k: int, x: torch.Tensor, options: BenchOptions) -> None:
    """Time candidate kernels on one batch; emit one record per kernel family."""
    from sparsecircuits.dictionaries import cpu_topk, kernels

    device, dtype = options.device, options.torch_dtype
    n, d = x.shape
    g = torch.Generator(device="cpu").manual_seed(0)
    W_enc = (torch.randn(d, d_sae, generator=g) / d**0.5).to(device, dtype)
    b_enc = (0.1 * torch.randn(d_sae, generator=g)).to(device, dtype)
    xs = x.to(dtype)
    pre = torch.addmm(b_enc, xs, W_enc)
    values, indices = pre.topk(k, dim=-1, sorted=False)
    grads = torch.randn(n, k, device=device, dtype=dtype)
    W_t = W_enc.t().contiguous()
    pattern = _csr_by_latent(indices, d_sae)
    x_aug = torch.cat([xs, torch.ones(n, 1, device=device, dtype=dtype)], 1)
    W_aug = torch.cat([W_enc, b_enc[None]], 0)
    pre_bf16 = pre.to(torch.bfloat16)
    families: dict[str, dict[str, Callable[[], Any]]] = {
        "encoder_matmul": {
            "addmm_bias": lambda: torch.addmm(b_enc, xs, W_enc),
            "mm_no_bias": lambda: torch.mm(xs, W_enc),
            "mm_bias_as_row": lambda: torch.mm(x_aug, W_aug),
        },
        "topk_select": {
            "topk_unsorted": lambda: pre.topk(k, dim=-1, sorted=False),
            "blocked_torch": lambda: kernels.blocked_topk(pre, k),
            **(
                {
                    "numba_segments": lambda: cpu_topk.row_topk(pre, k),
                    "numba_segments_bf16_input": lambda: cpu_topk.row_topk(pre_bf16, k),
                    "numba_quickselect_bf16_input": lambda: _quickselect_bf16(pre_bf16, k),
                }
                if cpu_topk.supports(pre, k)
                else {}
            ),
            "kthvalue_threshold": lambda: (
                pre >= pre.kthvalue(d_sae - k + 1, dim=-1, keepdim=True).values
            ),
        },
        "encode_forward": {
            "full_addmm_topk": lambda: _encode_full(xs, W_enc, b_enc, k),
            "row_chunks_1024": lambda: _encode_row_chunks(xs, W_enc, b_enc, k, 1024),
            "row_chunks_256": lambda: _encode_row_chunks(xs, W_enc, b_enc, k, 256),
            "col_chunks_2048": lambda: _encode_col_chunks(xs, W_enc, b_enc, k, 2048),
        },
        "encoder_grad_x": {
            "embedding_bag_copy_WT": lambda: F.embedding_bag(
                indices, W_enc.t().contiguous(), per_sample_weights=grads, mode="sum"
            ),
            "embedding_bag_cached_WT": lambda: F.embedding_bag(
                indices, W_t, per_sample_weights=grads, mode="sum"
            ),
        },
        "weight_grad": {
            "coo_sparse_mm_per_call": lambda: _coo_outer(indices, grads, xs, d_sae),
            "csr_pattern_reused": lambda: _csr_outer(pattern, grads, xs, d_sae),
            "csr_pattern_built": lambda: _csr_outer(
                _csr_by_latent(indices, d_sae), grads, xs, d_sae
            ),
            "index_add_outer": lambda: _index_add_outer(indices, grads, xs, d_sae),
        },
        "decode_forward": {
            "embedding_bag": lambda: F.embedding_bag(
                indices, W_t, per_sample_weights=values, mode="sum"
            ),
        },
    }
    params = [torch.nn.Parameter(W_enc.clone()), torch.nn.Parameter(W_t.clone())]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = {"adam_foreach": torch.optim.Adam(params, lr=1e-4)}
    try:
        optimizers["adam_fused"] = torch.optim.Adam(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError) as exc:
        log(f"fused Adam unavailable: {exc}")
    families["adam_step"] = {name: opt.step for name, opt in optimizers.items()}
    reference = _encode_full(xs, W_enc, b_enc, k).sort(1).values
    for name, fn in families["encode_forward"].items():  # the chunked encoders must be exact
        if not torch.equal(fn().sort(1).values, reference):
            log(f"warning: {name} selects different latents than the full encoder")
    for family, fns in families.items():
        extra: dict[str, Any] = {}
        if family == "encode_forward" and not device.startswith("cuda"):
            extra["peak_delta_mb"] = {name: _peak_delta_mb(fn) for name, fn in fns.items()}
        seconds = time_interleaved(fns, device, options.repeats, options.min_time_s)
        config = {
            **options.base_config(),
            "family": family,
            "d_sae": d_sae,
            "k": k,
            "batch_tokens": n,
            "d_in": d,
        }
        emit(
            {
                "name": "kernel_alternative",
                "library": "torch",
                "config": config,
                "ms": {name: round(s * 1000, 3) for name, s in seconds.items()},
                **extra,
            }
        )


def _step_variants(
    spec: dict[str, Any], batch: dict[str, torch.Tensor], options: BenchOptions
) -> dict[str, Callable[[], None]]:
    """Our trainer's step with each TopK selection mode (fp32 top-k; verified bf16 candidates)."""
    from sparsecircuits.dictionaries import kernels

    def variant(step: Callable[[], None], mode: str) -> Callable[[], None]:
        def run() -> None:
            previous = kernels.set_topk_selection(mode)
            try:
                step()
            finally:
                kernels.set_topk_selection(previous)

        return run

    return {
        f"selection_{mode}": variant(our_step(spec, batch, options), mode)
        for mode in ("fp32", "bf16")
    }


def selection_check(d_sae: int, k: int, x: torch.Tensor) -> dict[str, Any]:
    """The verified bf16 selection on a real batch: share of rows that needed the fp32
    fallback, share verified again on more candidates (per widening), and agreement of its top-k with the fp32 top-k (1.0 = every row identical)."""
    from sparsecircuits.dictionaries import DictionaryConfig, kernels, make

    cfg = DictionaryConfig(
        architecture="topk", kind="sae", d_in=x.shape[1], d_sae=d_sae, k=k, seed=0
    )
    sae = make(cfg)
    sae.init_biases_from_data(x, x)
    with torch.no_grad():
        x_in = (x - sae.b_in).contiguous()
        W, b = sae.W_enc.detach(), sae.b_enc.detach()
        selector = kernels._Bf16Selector(W, b, k, W.t().contiguous())
        rows = kernels.selection_rows(x_in.shape[0], d_sae)
        fast = torch.cat([selector(part)[1] for part in x_in.split(rows)])
        exact = torch.cat(
            [torch.addmm(b, part, W).topk(k, dim=-1).indices for part in x_in.split(rows)]
        )
    same = (fast.sort(1).values == exact.sort(1).values).all(1).float().mean()
    return {
        "fallback_row_share": round(selector.fallback_rows / x_in.shape[0], 4),
        "widened_row_share": round(selector.widened_rows / x_in.shape[0], 4),
        "rows_identical_to_fp32": round(float(same), 4),
        "margin": kernels._margin(k),
    }


def _one_step(trainer: Any) -> None:
    trainer.train(stop_at_step=trainer.step + 1)


def run(adapter: Any, options: BenchOptions) -> None:
    """Emit the per-phase step times (4k, 16k, 65k; k 32 and 128), the top operators and
    selection-mode variants of the step, and kernel alternatives at 4k."""
    batch = {
        h: t.to(options.device) for h, t in harvest_batch(adapter, BATCH_TOKENS, LAYER).items()
    }
    widths = [4096] if options.quick else [4096, 16384, 65536]
    x = batch[f"blocks.{LAYER}.mlp.hook_in"]
    for d_sae in widths:
        for k in (32, 128):
            spec = {"kind": "transcoder", "architecture": "topk", "d_sae": d_sae, "k": k}
            config = {**options.base_config(), **spec, "batch_tokens": BATCH_TOKENS}
            log(f"breakdown {spec}")
            step = our_step(spec, batch, options)
            phases = phase_times(step.trainer, step, n_steps=2 if d_sae >= 65536 else 3)  # type: ignore[attr-defined]
            emit(
                {
                    "name": "train_step_phases",
                    "library": "sparsecircuits",
                    "config": {**config, "selection": selection_and_precision(spec, options)[0]},
                    "ms": phases,
                }
            )
            if k == 32 and d_sae <= 16384:
                rows = profile_step(our_step(spec, batch, options), n_steps=3)
                emit({"name": "train_step_breakdown", "library": "sparsecircuits",
                      "config": config, "top_ops": rows})  # fmt: skip
            variants = k == 32 or d_sae >= 65536
            if variants and options.device == "cpu" and options.dtype == "float32":
                emit(_variant_record(spec, config, batch, x, options))
    alternatives(widths[0], 32, x, options)


def _variant_record(
    spec: dict[str, Any],
    config: dict[str, Any],
    batch: dict[str, torch.Tensor],
    x: torch.Tensor,
    options: BenchOptions,
) -> dict[str, Any]:
    """The `train_step_variant` record: our step's tokens/s with each selection mode and the bf16
    selection's check on the batch, or why it was skipped."""
    from sparsecircuits.dictionaries import kernels

    record = {"name": "train_step_variant", "library": "sparsecircuits", "config": config}
    if not kernels.cpu_has_fast_bf16():
        # an emulated bf16 GEMM runs at a few per cent of fp32's speed or less
        return record | {"skipped": "no native bf16 on this CPU: auto never selects bf16"}
    d_sae, k = spec["d_sae"], spec["k"]
    seconds = time_interleaved(
        _step_variants(spec, batch, options),
        options.device,
        options.repeats if d_sae < 65536 else min(options.repeats, 3),
        options.min_time_s,
    )
    return record | {
        "tokens_per_s": {n: round(BATCH_TOKENS / t, 1) for n, t in seconds.items()},
        "bf16_selection": selection_check(d_sae, k, x),
    }
