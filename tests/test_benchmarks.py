"""The benchmark harness itself (benchmarks/): repetition statistics, interleaving, the ceiling's
variants, the competing process, circuit-tracer's batch sweep, sparsify's CLI-equivalent
model loading and the report tables. No timings are asserted (the machine is shared)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from benchmarks import bench_graph, ceiling, common, report

REPO = Path(__file__).resolve().parents[1]

Emitted = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> Emitted:
    """A function returning the records `common.emit` printed so far in the test, parsed."""
    out = io.StringIO()
    monkeypatch.setattr(common, "_JSON_OUT", out)
    monkeypatch.setattr(common, "_RECORDS", [])
    return lambda: [json.loads(line) for line in out.getvalue().splitlines()]


# ------------------------------------------------------------------------------ statistics


def test_paired_ratios_divide_round_by_round() -> None:
    assert common.paired_ratios([2.0, 6.0, 3.0], [1.0, 2.0, 3.0]) == [2.0, 3.0, 1.0]
    with pytest.raises(ValueError, match="unpaired"):
        common.paired_ratios([1.0, 2.0], [1.0])


def test_spread_is_median_min_max() -> None:
    assert common.spread([3.0, 1.0, 10.0, 2.0, 4.0]) == {"median": 3.0, "min": 1.0, "max": 10.0}


def test_ratio_record_carries_median_min_max_and_repeats(
    emitted: Emitted,
) -> None:
    # the median of per-round ratios, not the ratio of medians: one slow round of "theirs"
    # (round 2) lifts only that round's ratio
    theirs = [2.0, 2.2, 9.0]
    ours = [1.0, 1.0, 1.0]
    common.ratio("train_step", "x", {"d_sae": 4}, common.paired_ratios(theirs, ours), note=1)
    (record,) = emitted()
    assert record["kind"] == "ratio"
    assert (record["ratio"], record["ratio_min"], record["ratio_max"]) == (2.2, 2.0, 9.0)
    assert record["repeats"] == 3 and record["note"] == 1


def test_time_rounds_interleaves_and_pairs_rounds() -> None:
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    alone, contested = common.time_rounds(fns, "cpu", repeats=3, min_time_s=0.0)
    assert {name: len(v) for name, v in alone.items()} == {"a": 3, "b": 3}
    assert contested == {}
    # warm-up + calibration per function, then A, B, A, B, A, B
    assert calls[4:] == ["a", "b"] * 3


class FakeCompetitor:
    """Records which calls ran while it was 'running'."""

    def __init__(self) -> None:
        self.active = False
        self.seen: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False


def test_time_rounds_times_each_function_alone_then_beside_the_competitor() -> None:
    competitor = FakeCompetitor()
    fns = {
        "a": lambda: competitor.seen.append(("a", competitor.active)),
        "b": lambda: competitor.seen.append(("b", competitor.active)),
    }
    alone, contested = common.time_rounds(
        fns,
        "cpu",
        repeats=3,
        min_time_s=0.0,
        competitor=competitor,  # type: ignore[arg-type]
    )
    assert all(len(v) == 3 for v in (*alone.values(), *contested.values()))
    rounds = competitor.seen[4:]
    assert rounds == [("a", False), ("a", True), ("b", False), ("b", True)] * 3


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_for_state(pid: int, wanted: set[str], timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    state = _state(pid)
    while state not in wanted and time.monotonic() < deadline:
        time.sleep(0.01)
        state = _state(pid)
    return state


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", common.COMPETITOR_KINDS)
def test_competitor_is_stopped_outside_and_running_inside_the_block(kind: str) -> None:
    with common.Competitor(kind) as competitor:
        pid = competitor.proc.pid
        assert _wait_for_state(pid, {"T", "t"}) in {"T", "t"}
        with competitor.running():
            assert _wait_for_state(pid, {"R"}) == "R"  # a busy loop is always runnable
        assert _wait_for_state(pid, {"T", "t"}) in {"T", "t"}
    assert competitor.proc.poll() is not None  # ended on exit


def test_competitor_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="spin"):
        common.Competitor("sleep")


# ------------------------------------------------------------------------------ ceiling


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ceiling_variants_compute_the_encoder_product(precision: str) -> None:
    x = torch.randn(2304, 16)
    fns = ceiling.variants(x, 96, precision, seed=3)
    assert {f"{precision}:matmul", f"{precision}:mm_out", f"{precision}:mm_out_chunks1024"} <= set(
        fns
    )
    W = torch.randn(16, 96, generator=torch.Generator().manual_seed(3))
    dtype = ceiling.PRECISIONS[precision]
    expected = (x.to(dtype) @ W.to(dtype)).float()
    tol = 1e-4 if precision == "fp32" else 2.0**-7
    for name, fn in fns.items():
        got = fn()
        assert got.dtype == dtype, name
        assert (got.float() - expected).abs().max() <= tol * expected.abs().max(), name


def test_ceiling_variant_by_name() -> None:
    assert list(ceiling.variants(torch.randn(64, 8), 32, "bf16", only="bf16:mm_out")) == [
        "bf16:mm_out"
    ]


def test_ceiling_leaves_out_a_variant_that_is_not_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ceiling._candidates

    def with_wrong(x: torch.Tensor, W: torch.Tensor, precision: str) -> dict[str, Any]:
        fns = real(x, W, precision)
        fns["halved"] = lambda: torch.mm(x, W) * 0.5
        fns["broken"] = lambda: (_ for _ in ()).throw(RuntimeError("no backend"))
        return fns

    monkeypatch.setattr(ceiling, "_candidates", with_wrong)
    fns = ceiling.variants(torch.randn(64, 8), 32, "fp32")
    assert "fp32:halved" not in fns and "fp32:broken" not in fns and "fp32:mm_out" in fns


def test_ceiling_precision_follows_the_step() -> None:
    assert ceiling.step_precision("float32", "bf16") == "bf16"
    assert ceiling.step_precision("float32", "fp32") == "fp32"
    assert ceiling.step_precision("float32", None) == "fp32"  # ReLU: dense fp32 GEMM
    assert ceiling.step_precision("bfloat16", None) == "bf16"


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_ceilings_are_timed_at_the_precisions_the_steps_select_from(
    emitted: Emitted, monkeypatch: pytest.MonkeyPatch, fast_bf16: bool
) -> None:
    """bf16 ceilings only where a TopK step at that width selects from bf16: a CPU without native
    bf16 would spend minutes per width timing an emulated GEMM no step uses."""
    from benchmarks import bench_train_step

    from sparsecircuits.dictionaries import kernels

    monkeypatch.setattr(kernels, "cpu_has_fast_bf16", lambda: fast_bf16)
    options = common.BenchOptions(repeats=1, min_time_s=0.0)
    grid = bench_train_step.configs(False, "relu:4096,topk:4096:32,topk:4096:128")
    chosen = {
        (s["architecture"], s["k"]): bench_train_step.selection_and_precision(s, options)
        for s in grid
    }
    assert chosen[("relu", None)] == (None, "fp32")
    assert chosen[("topk", 128)] == ("fp32", "fp32")
    assert chosen[("topk", 32)] == (("bf16", "bf16") if fast_bf16 else ("fp32", "fp32"))

    needed = {"fp32"} | {precision for _, precision in chosen.values()}
    x = torch.randn(64, 32)
    fastest = bench_train_step.measure_ceilings(x, 96, options, needed)
    records = [r for r in emitted() if r["name"] == "matmul_ceiling"]
    precisions = ["fp32", "bf16"] if fast_bf16 else ["fp32"]
    assert [r["config"]["precision"] for r in records] == precisions
    assert list(fastest) == precisions


def test_selection_variants_are_skipped_without_native_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without native bf16 the breakdown records why it skips the bf16 selection variant and
    times nothing (each emulated bf16 step would take seconds to minutes)."""
    from benchmarks import bench_breakdown

    from sparsecircuits.dictionaries import kernels

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("timed a step")

    monkeypatch.setattr(kernels, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(bench_breakdown, "time_interleaved", never)
    spec = {"kind": "transcoder", "architecture": "topk", "d_sae": 4096, "k": 32}
    record = bench_breakdown._variant_record(
        spec, {"d_sae": 4096}, {}, torch.zeros(1, 1), common.BenchOptions()
    )
    assert record["name"] == "train_step_variant" and "native bf16" in record["skipped"]
    assert "tokens_per_s" not in record


# ------------------------------------------------------------------------------ graph sweep


def test_graph_sweep_picks_the_fastest_batch_and_records_the_sweep(
    monkeypatch: pytest.MonkeyPatch, emitted: Emitted
) -> None:
    asked: dict[str, Any] = {}

    def fake_spawn(options: Any, contender: str, n_tokens: int, k: int, timeout_s: float, **kw):
        asked.update(kw, contender=contender)
        seconds = {128: 3.0, 256: 2.0, 512: 2.5, 1024: 4.0}
        return {"sweep": [{"batch_size": b, "seconds": s} for b, s in seconds.items()]}, 0.0, ""

    monkeypatch.setattr(bench_graph, "_spawn", fake_spawn)
    options = common.BenchOptions()
    best = bench_graph.best_batch_size(options, 17, 32, [128, 256, 512, 1024], {"n_tokens": 17})
    assert best == 256
    assert asked["contender"] == "circuit-tracer" and asked["sweep"] == [128, 256, 512, 1024]
    (record,) = emitted()
    assert record["name"] == "graph_batch_sweep" and record["best_batch_size"] == 256
    assert record["seconds_by_batch_size"] == {"128": 3.0, "256": 2.0, "512": 2.5, "1024": 4.0}


def test_graph_sweep_falls_back_to_the_default_when_the_worker_fails(
    monkeypatch: pytest.MonkeyPatch, emitted: Emitted
) -> None:
    monkeypatch.setattr(bench_graph, "_spawn", lambda *a, **k: (None, 0.0, "worker failed"))
    best = bench_graph.best_batch_size(common.BenchOptions(), 17, 32, [128, 512], {})
    assert best == bench_graph.DEFAULT_THEIRS_BATCH
    assert emitted()[0]["skipped"] == "worker failed"


def test_graph_competition_line_pairs_rounds_and_gives_each_side_slowdown(
    emitted: Emitted,
) -> None:
    def runs(*seconds: float | None) -> list[dict[str, Any] | None]:
        return [None if s is None else {"seconds": s} for s in seconds]

    alone = {"sparsecircuits": runs(1.0, 1.0, 2.0, 1.0), "circuit-tracer": runs(5.0, 6.0, 5.0, 5.0)}
    beside = {
        "sparsecircuits": runs(2.0, 3.0, None, 2.0),  # round 3 failed: dropped from the pairs
        "circuit-tracer": runs(10.0, 9.0, 5.0, 15.0),
    }
    bench_graph.emit_graph_competition(
        {"n_tokens": 17}, alone, beside, "sparsecircuits", "spin", {"theirs_batch_size": 256}
    )
    (record,) = emitted()
    assert record["config"] == {"n_tokens": 17, "competition": "spin"}
    assert record["repeats"] == 3
    assert (record["ratio"], record["ratio_min"], record["ratio_max"]) == (5.0, 3.0, 7.5)
    assert record["slowdown"]["sparsecircuits"] == {"median": 2.0, "min": 2.0, "max": 3.0}
    assert record["slowdown"]["circuit-tracer"] == {"median": 2.0, "min": 1.5, "max": 3.0}
    assert record["ratio_alone"] == {"median": 5.0, "min": 5.0, "max": 6.0}
    assert record["theirs_batch_size"] == 256


# ------------------------------------------------------------------------------ sparsify


def _bench_python() -> Path | None:
    roots = [REPO]
    git = REPO / ".git"
    if git.is_file():  # a worktree: the environments live in the main checkout
        roots.append(Path(git.read_text().split(":", 1)[1].strip()).parents[2])
    for root in roots:
        python = root / ".venv-bench" / "bin" / "python"
        if python.is_file():
            return python
    return None


SPARSIFY_PROBE = """
import json, sys
import sparsify
from benchmarks import third_party
from sparsecircuits.models.tiny import build_tiny_model
import torch

seen = {}
class Capture:
    def __init__(self, cfg, dataset, model):
        seen.update(model=type(model).__name__, lm_head=hasattr(model, "lm_head"),
                    hookpoints=list(cfg.hookpoints), dtype=str(next(model.parameters()).dtype),
                    n=len(dataset))
    def fit(self):
        pass
sparsify.Trainer = Capture
folder = build_tiny_model("gpt2", sys.argv[1])
ids = torch.randint(1, 100, (4, 16))
fit = third_party.sparsify_fit(str(folder), 1, ids, 64, 4, 2, sys.argv[1] + "/save", "cpu")
tokens = fit()
print(json.dumps({**seen, "tokens": tokens}))
"""


def test_sparsify_end_to_end_loads_the_model_like_its_cli(tmp_path: Path) -> None:
    python = _bench_python()
    if python is None:
        pytest.skip("sparsify's environment (.venv-bench) is absent")
    check = subprocess.run([str(python), "-c", "import sparsify"], capture_output=True)
    if check.returncode != 0:
        pytest.skip("sparsify does not import in .venv-bench")
    done = subprocess.run(
        [str(python), "-c", SPARSIFY_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'src'}", "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # `python -m sparsify` with its default FVU loss: AutoModel, i.e. no LM head, no logits
    assert seen["model"] == "GPT2Model" and seen["lm_head"] is False
    assert seen["hookpoints"] == ["h.1.mlp"]
    assert seen["dtype"] == "torch.float32"  # the checkpoint's own dtype on CPU ("auto")
    assert seen["tokens"] == 4 * 16


def test_sparsify_cli_dtype_on_cpu_is_the_checkpoints() -> None:
    from benchmarks import third_party

    assert third_party.sparsify_cli_model_dtype("cpu") == "auto"


# ------------------------------------------------------------------------------ report


def test_report_shows_median_min_max_competition_and_sweeps() -> None:
    records = [
        {
            "kind": "ratio",
            "what": "train_step",
            "vs": "ceiling",
            "config": {"kind": "sae", "d_sae": 4096},
            "ratio": 0.81,
            "ratio_min": 0.7,
            "ratio_max": 0.9,
            "repeats": 5,
            "ceiling": "bf16:mm_out",
            "ceiling_precision": "bf16",
        },
        {
            "kind": "ratio",
            "what": "graph_time",
            "vs": "circuit-tracer",
            "config": {"n_tokens": 17, "competition": "spin"},
            "ratio": 6.0,
            "ratio_min": 5.0,
            "ratio_max": 7.0,
            "repeats": 3,
            "ratio_alone": {"median": 5.0, "min": 4.5, "max": 5.5},
            "slowdown": {
                "sparsecircuits": {"median": 1.2, "min": 1.1, "max": 1.3},
                "circuit-tracer": {"median": 1.9, "min": 1.8, "max": 2.0},
            },
        },
        {
            "name": "graph_batch_sweep",
            "library": "circuit-tracer",
            "config": {"n_tokens": 17},
            "seconds_by_batch_size": {"256": 2.0, "512": 2.5},
            "best_batch_size": 256,
            "seconds": 2.0,
        },
    ]
    text = report.tables(records)
    assert "| train_step | ceiling | kind=sae, d_sae=4096, ceiling=bf16:mm_out" in text
    assert "0.81 [0.70, 0.90] | 5 |" in text
    assert "| 6.00 [5.00, 7.00] | 5.00 [4.50, 5.50] | 1.20 [1.10, 1.30] | 1.90 [1.80, 2.00] |" in (
        text
    )
    assert "| n_tokens=17 | 256: 2, 512: 2.5 | 256 |" in text
    # a ratio line from before the repetition fields still renders
    old = {"kind": "ratio", "what": "x", "vs": "y", "config": {}, "ratio": 1.5}
    assert "| x | y |  | 1.50 | 1 |" in report.tables([old])


def test_graph_scale_pairs_three_rounds_at_the_swept_batch(
    monkeypatch: pytest.MonkeyPatch, emitted: Emitted
) -> None:
    from benchmarks import bench_graph_scale

    calls: list[tuple[str, Any, Any]] = []
    ours_seconds = iter([2.0, 4.0, 6.0])

    def fake_spawn(
        options: Any, contender: str, n_tokens: int, budget: Any, timeout_s: float, **kw
    ):
        calls.append((contender, kw.get("batch_size"), kw.get("sweep")))
        if kw.get("sweep"):
            return {
                "sweep": [{"batch_size": 256, "seconds": 9.0}, {"batch_size": 512, "seconds": 7.0}]
            }, ""
        ours = contender == "sparsecircuits"
        seconds = next(ours_seconds) if ours else 10.0
        result = {"seconds": seconds, "graph_peak_delta_mb": 100.0 if ours else 400.0}
        result.update(process_peak_rss_mb=1000.0 if ours else 3000.0, n_features=5, n_edges=7)
        return result, ""

    monkeypatch.setattr(bench_graph_scale, "_spawn", fake_spawn)
    monkeypatch.setattr(bench_graph_scale, "ensure_scale_model", lambda workdir: None)
    monkeypatch.setattr(bench_graph_scale, "why_unavailable", lambda contender: None)
    bench_graph_scale.run(common.BenchOptions(), cases=((32, 8192),), theirs_batch_sizes=[256, 512])
    assert calls[0] == ("circuit-tracer", None, [256, 512])
    measured = calls[1:]
    assert [c for c, _, _ in measured] == ["sparsecircuits", "circuit-tracer"] * 3
    assert {b for c, b, _ in measured if c == "circuit-tracer"} == {512}
    records = emitted()
    time_line = next(r for r in records if r.get("what") == "graph_time")
    # ours took 2, 4, 6 s against 10 s: per-round ratios 5, 2.5, 1.67
    assert time_line["repeats"] == 3 and time_line["theirs_batch_size"] == 512
    assert (time_line["ratio"], time_line["ratio_min"], time_line["ratio_max"]) == (2.5, 1.667, 5.0)
    sweep = next(r for r in records if r.get("name") == "graph_batch_sweep")
    assert sweep["best_batch_size"] == 512
    theirs = next(
        r for r in records if r.get("name") == "graph" and r["library"] == "circuit-tracer"
    )
    assert theirs["config"]["batch_size"] == 512


def test_dead_frac_holds_that_share_of_our_latents_dead_every_step() -> None:
    """`--dead-frac` holds the same seeded latents dead before each of our steps, so AuxK runs
    on every timed step however the latents fire (and sparsify gets the same latents)."""
    from benchmarks.bench_train_step import LAYER, held_dead, our_step

    gen = torch.Generator().manual_seed(0)
    batch = {
        f"blocks.{LAYER}.mlp.hook_in": torch.randn(512, 16, generator=gen),
        f"blocks.{LAYER}.hook_mlp_out": torch.randn(512, 16, generator=gen),
    }
    options = common.BenchOptions(dead_frac=0.25)
    step = our_step(
        {"kind": "transcoder", "architecture": "topk", "d_sae": 64, "k": 4}, batch, options
    )
    shares = [step()["dead_frac"] for _ in range(3)]
    assert shares == [0.25, 0.25, 0.25]
    dead = held_dead(64, 0.25)
    assert dead is not None and len(set(dead.tolist())) == 16
    assert torch.equal(dead, held_dead(64, 0.25))
    assert held_dead(64, 0.0) is None


def test_overlap_takes_a_model_folder_and_width_and_reports_every_run(
    emitted: Emitted,
) -> None:
    """`bench_overlap --model tiny --d-sae N` (what the device plan runs with its own model and
    `--device cuda`): four records on that model and width, end to end against the ideal."""
    from benchmarks import bench_overlap

    assert (
        bench_overlap.main(["--steps", "4", "--rounds", "1", "--model", "tiny", "--d-sae", "64"])
        == 0
    )
    records = emitted()
    assert [r["name"] for r in records] == [
        "overlap_harvest_only",
        "overlap_train_only",
        "overlap_end_to_end_prefetch_off",
        "overlap_end_to_end_prefetch_on",
    ]
    for r in records:
        assert r["config"]["device"] == "cpu" and r["config"]["model"] == "tiny-gpt2-256"
        assert r["config"]["d_sae"] == 64 and r["config"]["steps"] == 4
        assert r["tokens_per_s"] > 0
    for r in records[2:]:
        assert r["vs_ideal_serial"] == pytest.approx(
            r["tokens_per_s"] / r["ideal_serial_tokens_per_s"], rel=1e-2
        )
        assert len(r["steps"]) == 1 and r["steps"][0]["stalls"] >= 0


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_step_floor_times_each_kernel_and_bounds_the_ratio(
    emitted: Emitted, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """One line per kernel a TopK step cannot skip, then the floor: their summed medians and the
    GEMM's share of that sum (the best ratio to the ceiling any step could reach). Only the bf16
    selection rescores its candidates."""
    from benchmarks import step_floor

    monkeypatch.setattr(step_floor, "N_TOKENS", 256)
    step_floor.main(["--d-sae", "256", "--k", "4", "--repeats", "1", "--precision", precision])
    lines = emitted()
    kernels = [r for r in lines if r["name"] == "step_floor_kernel"]
    names = list(step_floor.kernels_of_a_step(256, 4, precision=precision))
    assert [r["kernel"] for r in kernels] == names
    assert names[0] == f"{precision} GEMM (the ceiling)"
    assert any("rescoring" in name for name in names) == (precision == "bf16")
    assert all(r["config"]["precision"] == precision for r in kernels)
    assert all(r["ms"]["median"] > 0 for r in kernels)
    (floor,) = [r for r in lines if r["name"] == "step_floor"]
    total = sum(r["ms"]["median"] for r in kernels)
    assert floor["ms"] == pytest.approx(total, abs=0.05)
    # both milliseconds are rounded to 0.01 ms, which at these tiny shapes moves their quotient
    gemm, ms = floor["gemm_ms"], floor["ms"]
    rounding = 0.005 * (1 / ms + gemm / ms**2)
    assert floor["best_ratio_to_ceiling"] == pytest.approx(gemm / ms, abs=rounding + 1e-3)
    assert 0 < floor["best_ratio_to_ceiling"] < 1
