"""The transcoder-vs-SAE convergence sweep: the stopping rule, and the whole command end to end
on a tiny random model (rows per budget, stopping, resume, report)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from sparsecircuits.cli import main
from sparsecircuits.errors import SparseCircuitsError
from sparsecircuits.models.tiny import tokenizer_corpus
from sparsecircuits.pipelines.convergence import (
    ConvergenceConfig,
    _check_not_resumed_past_stop,
    converged_at,
    converged_budget,
    partner_name,
    read_rows,
    relative_improvement,
    stopped_at,
)
from sparsecircuits.pipelines.convergence_report import (
    matched_pairs,
    set_log_or_symlog_y,
    summarise,
    table_markdown,
    trajectory_markdown,
)
from sparsecircuits.training.trainer import Trainer


def test_relative_improvement_is_the_fraction_removed() -> None:
    assert relative_improvement(0.2, 0.15) == pytest.approx(0.25)
    assert relative_improvement(0.2, 0.22) == pytest.approx(-0.1)  # worse
    assert relative_improvement(0.0, 0.1) == 0.0  # nothing left to improve


def test_converged_budget_is_the_first_doubling_below_tolerance() -> None:
    # 10 %, 5 %, 2 %, then 0.5 %: stops at the 0.5 % doubling, not before
    points = [(1, 1.0), (2, 0.9), (4, 0.855), (8, 0.8379), (16, 0.8337), (32, 0.5)]
    assert converged_budget(points, 0.01) == 16
    assert converged_budget(list(reversed(points)), 0.01) == 16  # order of the input is free
    assert converged_budget(points, 0.03) == 8  # 2 % < 3 %
    # a doubling that makes it worse counts as converged; a single budget cannot be
    assert converged_budget([(1, 1.0), (2, 1.01)], 0.01) == 2
    assert converged_budget([(1, 1.0)], 0.01) is None
    assert converged_budget([(1, 1.0), (2, 0.98), (4, 0.9)], 0.01) is None


def _row(name: str, seed: int, budget: int, increase: float) -> dict:
    return {"name": name, "seed": seed, "budget": budget, "ce_increase": increase,
            "ce_loss_spliced": 2.0 + increase}  # fmt: skip


def test_stopped_at_uses_the_seed_mean_and_waits_for_every_seed() -> None:
    cfg = ConvergenceConfig(
        seeds=[0, 1], first_budget=4096, max_budget=16384, criterion="ce_increase"
    )
    rows = [_row("a", 0, 4096, 0.10), _row("a", 1, 4096, 0.12)]
    rows += [_row("a", 0, 8192, 0.0995), _row("a", 1, 8192, 0.1195)]  # 0.45 % better
    rows += [_row("b", 0, 4096, 0.10), _row("b", 1, 4096, 0.10)]
    rows += [_row("b", 0, 8192, 0.05)]  # seed 1 not yet evaluated at 8192
    assert stopped_at(rows, cfg) == {"a": 8192}
    # b: CE increase 0.10 -> 0.085 (15 % better) but spliced CE 2.100 -> 2.085 (0.7 %): only
    # the default rule on the spliced CE itself stops it, once its second seed is in
    loose = ConvergenceConfig(seeds=[0, 1], first_budget=4096, max_budget=16384)
    assert stopped_at([*rows, _row("b", 1, 8192, 0.12)], loose) == {"a": 8192, "b": 8192}


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(SparseCircuitsError, match="criterion"):
        ConvergenceConfig(criterion="loss")
    with pytest.raises(SparseCircuitsError, match="first_budget"):
        ConvergenceConfig(first_budget=1000, batch_tokens=4096)
    assert ConvergenceConfig(first_budget=250_000, max_budget=1_000_000).budgets() == [
        250_000,
        500_000,
        1_000_000,
    ]


def _sweep_args(model: Path, data: Path, out: Path, ks: str, seeds: int) -> list[str]:
    """A tc-vs-sae command line on the tiny model: layer 1, 64-token batches from 128 tokens."""
    return ["tc-vs-sae", "--model", str(model), "--dataset", str(data),
            "--eval-dataset", str(data), "--out", str(out), "--layers", "1", "--ks", ks,
            "--seeds", str(seeds), "--d-sae", "16", "--context-size", "16", "--eval-contexts", "2",
            "--batch-tokens", "64", "--buffer-tokens", "256", "--first-budget", "128",
            "--device", "cpu", "--quiet"]  # fmt: skip


def test_tc_vs_sae_runs_stops_resumes_and_reports(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.txt"
    data.write_text("\n\n".join(tokenizer_corpus(400, seed=3)))
    out = tmp_path / "sweep"

    def args_for(max_budget: int) -> list[str]:
        return [*_sweep_args(tiny_model_dir("gpt2"), data, out, "2,4", 2),
                "--max-budget", str(max_budget), "--tolerance", "0.5"]  # fmt: skip

    args = args_for(512)
    assert main(args) == 0
    rows = read_rows(out / "results.jsonl")
    names = {r["name"] for r in rows}
    assert names == {f"{kind}-L1-k{k}" for kind in ("transcoder", "sae") for k in (2, 4)}
    for r in rows:
        assert r["ce_increase"] == pytest.approx(r["ce_loss_spliced"] - r["ce_loss_clean"])
        assert r["l0"] <= r["k"] + 1e-6 and r["kl_div"] >= 0
        assert r["tokens"] == r["budget"]
    cfg = ConvergenceConfig(seeds=[0, 1], first_budget=128, max_budget=512, batch_tokens=64,
                            tolerance=0.5)  # fmt: skip
    stops = stopped_at(rows, cfg)
    for name in names:  # each configuration runs until it stops, and not a budget further
        budgets = sorted({r["budget"] for r in rows if r["name"] == name})
        assert budgets == [b for b in (128, 256, 512) if b <= stops.get(name, 512)]
        assert all(sum(r["budget"] == b and r["name"] == name for r in rows) == 2 for b in budgets)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["summaries"]) == 4 and len(summary["pairs"]) == 2
    assert (out / "frontier.png").stat().st_size > 0 and (out / "budgets.png").stat().st_size > 0
    table = (out / "table.md").read_text()
    assert "KL" in table and "CE recovered" in table and "CE increase" in table
    assert table in capsys.readouterr().out

    # Rerunning the finished sweep trains nothing more and writes no new rows.
    before = (out / "results.jsonl").read_text()
    assert main(args) == 0
    assert (out / "results.jsonl").read_text() == before
    # Extending it to a larger budget continues the unconverged from their checkpoints.
    assert main(args_for(1024)) == 0
    extended = read_rows(out / "results.jsonl")
    assert len(extended) >= len(rows)
    for r in extended:
        if r["budget"] == 1024:
            assert r["tokens"] == 1024
    # Other settings in the same folder are refused; --report-only rewrites the report.
    assert main([*args, "--lr", "0.01"]) == 2
    assert "other settings (lr)" in capsys.readouterr().err
    (out / "table.md").unlink()
    assert main([*args, "--report-only"]) == 0
    assert (out / "table.md").is_file()


def test_matched_pairs_verdict_needs_the_interval_to_exclude_zero() -> None:
    cfg = ConvergenceConfig(seeds=[0, 1, 2], first_budget=4096, max_budget=4096)

    def row(kind: str, seed: int, increase: float, kl: float) -> dict:
        return {"name": f"{kind}-L0-k8", "kind": kind, "layer": 0, "k": 8, "seed": seed,
                "budget": 4096, "l0": 8.0, "fvu": 0.1, "ce_increase": increase,
                "ce_loss_spliced": 2 + increase, "ce_loss_recovered": 0.9, "kl_div": kl}  # fmt: skip

    clear = [row("transcoder", s, 0.10 + 0.001 * s, 0.1) for s in range(3)]
    clear += [row("sae", s, 0.20 + 0.001 * s, 0.2) for s in range(3)]
    (pair,) = matched_pairs(clear, cfg)
    assert pair["better"] == "transcoder" and pair["diff"]["ce_increase"]["mean"] == pytest.approx(
        -0.1
    )
    noisy = [row("transcoder", s, [0.1, 0.3, 0.2][s], 0.1) for s in range(3)]
    noisy += [row("sae", s, [0.25, 0.15, 0.21][s], 0.1) for s in range(3)]
    assert matched_pairs(noisy, cfg)[0]["better"] == "tie"
    (tc, sae) = summarise(clear, cfg)
    assert tc["kind"] == "transcoder" and sae["kind"] == "sae"
    assert tc["ce_increase"]["low"] < tc["ce_increase"]["mean"] < tc["ce_increase"]["high"]


def test_a_budget_counts_once_every_seed_reached_it() -> None:
    cfg = ConvergenceConfig(seeds=[0, 1, 2], first_budget=4096, max_budget=8192)

    def row(seed: int, budget: int, increase: float) -> dict:
        return {"name": "sae-L0-k8", "kind": "sae", "layer": 0, "k": 8, "seed": seed,
                "budget": budget, "l0": 8.0, "fvu": 0.1, "ce_increase": increase,
                "ce_loss_spliced": 2 + increase, "ce_loss_recovered": 0.9, "kl_div": 0.1}  # fmt: skip

    rows = [row(s, 4096, 0.2) for s in range(3)] + [row(0, 8192, 0.1), row(1, 8192, 0.1)]
    (summary,) = summarise(rows, cfg)
    assert summary["budget"] == 4096 and summary["seeds"] == 3
    assert summary["last_improvement"] is None and not summary["converged"]
    trajectory = trajectory_markdown(rows, cfg)
    assert "4,096" in trajectory and "8,192" not in trajectory
    rows.append(row(2, 8192, 0.1))
    (summary,) = summarise(rows, cfg)
    assert summary["budget"] == 8192 and summary["last_improvement"] == pytest.approx(0.1 / 2.2)
    assert summary["last_increase_improvement"] == pytest.approx(0.5)
    assert summary["converged"] is False and summary["got_worse"] is False
    assert summary["best_budget"] == 8192


def test_a_doubling_that_got_worse_is_reported_as_a_degradation() -> None:
    """The stopping rule fires when a doubling makes the loss worse; the summary and the table say
    so, with the budget where it was best, instead of calling it converged."""
    cfg = ConvergenceConfig(
        seeds=[0, 1], first_budget=4096, max_budget=16384, criterion="ce_increase"
    )

    def row(seed: int, budget: int, increase: float) -> dict:
        return {"name": "sae-L0-k8", "kind": "sae", "layer": 0, "k": 8, "seed": seed,
                "budget": budget, "l0": 8.0, "fvu": 0.1, "ce_increase": increase,
                "ce_loss_spliced": 2 + increase, "ce_loss_recovered": 0.9, "kl_div": 0.1}  # fmt: skip

    curve = {4096: 0.3, 8192: 0.2, 16384: 0.25}
    rows = [row(s, b, v) for b, v in curve.items() for s in (0, 1)]
    (summary,) = summarise(rows, cfg)
    assert summary["converged"] and summary["got_worse"]
    assert summary["best_budget"] == 8192
    assert summary["last_improvement"] == pytest.approx(-0.25)
    assert "| 16,384 | 16,384 | -25.0 % (best at 8,192) |" in table_markdown(rows, cfg)


def test_a_configuration_is_reported_where_its_rule_stopped_it() -> None:
    """Rows a stricter sweep trained past the stop stay in the trajectory, but the summary (and so
    the verdict) is at the budget where the rule fired, with both criteria's last improvement."""
    cfg = ConvergenceConfig(seeds=[0, 1], first_budget=4096, max_budget=16384)

    def row(seed: int, budget: int, increase: float) -> dict:
        return {"name": "sae-L0-k8", "kind": "sae", "layer": 0, "k": 8, "seed": seed,
                "budget": budget, "l0": 8.0, "fvu": 0.1, "ce_increase": increase,
                "ce_loss_spliced": 2 + increase, "ce_loss_recovered": 0.9, "kl_div": 0.1}  # fmt: skip

    # spliced CE 2.5 -> 2.1 (16 %) -> 2.09 (0.48 %, stops) -> 2.08
    curve = {4096: 0.5, 8192: 0.1, 16384: 0.09, 32768: 0.08}
    rows = [row(s, b, v) for b, v in curve.items() for s in (0, 1)]
    (summary,) = summarise(rows, cfg)
    assert summary["converged"] and summary["budget"] == 16384 and summary["trained_to"] == 32768
    assert summary["ce_increase"]["mean"] == pytest.approx(0.09)
    assert summary["last_improvement"] == pytest.approx(0.01 / 2.1)
    assert summary["last_increase_improvement"] == pytest.approx(0.1)
    assert "32,768" in trajectory_markdown(rows, cfg)


def test_a_transcoder_and_its_sae_stop_together_once_both_converged() -> None:
    cfg = ConvergenceConfig(seeds=[0], first_budget=4096, max_budget=32768)
    # the SAE converges at 8,192 (0.5 %), the transcoder only at 16,384
    sae = {4096: 2.5, 8192: 2.4875, 16384: 2.48, 32768: 2.47}
    tc = {4096: 3.0, 8192: 2.8, 16384: 2.79}
    rows = [_row("sae-L0-k8", 0, b, v - 2) for b, v in sae.items()]
    rows += [_row("transcoder-L0-k8", 0, b, v - 2) for b, v in tc.items()]
    assert converged_at(rows, cfg) == {"sae-L0-k8": 8192, "transcoder-L0-k8": 16384}
    assert stopped_at(rows, cfg) == {"sae-L0-k8": 16384, "transcoder-L0-k8": 16384}
    # until the transcoder converges, the SAE trains on
    early = [r for r in rows if r["budget"] <= 8192]
    assert stopped_at(early, cfg) == {}
    # The table reports both at 16,384 and says where each side's own rule fired.
    for r in rows:
        r.update(kind=r["name"].split("-")[0], layer=0, k=8, l0=8.0, fvu=0.1, kl_div=0.1,
                 ce_loss_recovered=0.9)  # fmt: skip
    table = table_markdown(rows, cfg)
    assert "| spliced CE, last doubling | CE increase, last doubling |" in table
    assert "| 0 | 8 | sae | 16,384 | 8,192 | +0.3 % | +1.5 % |" in table
    assert "| 0 | 8 | transcoder | 16,384 | 16,384 | +0.4 % | +1.2 % |" in table
    assert partner_name("sae-L0-k8") == "transcoder-L0-k8" and partner_name("a") is None


def test_pairs_also_compare_each_side_at_its_best_budget() -> None:
    """An SAE that got worse before its transcoder converged: the headline pair is at the shared
    stop budget; `at_best` takes the SAE where it was best."""
    cfg = ConvergenceConfig(seeds=[0, 1, 2], first_budget=4096, max_budget=16384)

    def row(kind: str, seed: int, budget: int, increase: float) -> dict:
        return {"name": f"{kind}-L0-k8", "kind": kind, "layer": 0, "k": 8, "seed": seed,
                "budget": budget, "l0": 8.0, "fvu": 0.1, "ce_increase": increase + 0.001 * seed,
                "ce_loss_spliced": 2 + increase + 0.001 * seed, "ce_loss_recovered": 0.9,
                "kl_div": 0.1}  # fmt: skip

    sae = {4096: 0.30, 8192: 0.10, 16384: 0.13}  # best at 8,192, worse after
    tc = {4096: 0.50, 8192: 0.20, 16384: 0.12}  # 2.20 -> 2.12: 3.6 %, not converged
    rows = [row("sae", s, b, v) for b, v in sae.items() for s in range(3)]
    rows += [row("transcoder", s, b, v) for b, v in tc.items() for s in range(3)]
    (pair,) = matched_pairs(rows, cfg)
    assert pair["sae"]["budget"] == pair["transcoder"]["budget"] == 16384
    assert pair["diff"]["ce_increase"]["mean"] == pytest.approx(-0.01)
    assert pair["better"] == "transcoder"
    assert pair["sae"]["best_budget"] == 8192
    assert pair["at_best"]["ce_increase"]["mean"] == pytest.approx(0.02)
    assert pair["at_best"]["better"] == "sae"
    table = table_markdown(rows, cfg)
    assert "each at its best budget" in table
    assert "| 0 | 8 | sae | 16,384 | 16,384 | -1.4 % (best at 8,192) |" in table
    assert "| 0 | 8 | transcoder | 16,384 | no | +3.6 % |" in table


def test_tc_vs_sae_continues_under_another_stopping_rule(
    tiny_model_dir: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "data.txt"
    data.write_text("\n\n".join(tokenizer_corpus(200, seed=4)))
    out = tmp_path / "sweep"
    base = _sweep_args(tiny_model_dir("gpt2"), data, out, "2", 1)
    # One budget: nothing can have stopped, so every configuration goes on under any rule.
    assert main([*base, "--max-budget", "128"]) == 0
    first = tmp_path / "first"
    shutil.copytree(out, first)
    loaded: list[str] = []
    load = Trainer.load_checkpoint

    def spy(trainer: Trainer, folder: str | Path) -> None:
        loaded.append(Path(folder).name)
        load(trainer, folder)

    monkeypatch.setattr(Trainer, "load_checkpoint", spy)
    rule = ["--criterion", "ce_increase", "--tolerance", "0.2", "--max-budget", "256"]
    assert main([*base, *rule]) == 0
    assert loaded == ["step_000000002"]  # trained on from the 128-token state (2 steps)
    rows = read_rows(out / "results.jsonl")
    assert sorted({r["budget"] for r in rows}) == [128, 256]
    assert all(r["tokens"] == r["budget"] for r in rows)

    # A seed whose checkpoints record other settings starts again, says so, and keeps them.
    other = tmp_path / "other"
    shutil.copytree(first, other)
    run_json = other / "seed0" / "checkpoints" / "step_000000002" / "run.json"
    record = json.loads(run_json.read_text())
    record["settings"]["run"]["lr"], record["fingerprint"] = 1.0, "another run"
    run_json.write_text(json.dumps(record))
    loaded.clear()
    capsys.readouterr()
    assert main([*_sweep_args(tiny_model_dir("gpt2"), data, other, "2", 1), *rule]) == 0
    assert loaded == [] and run_json.is_file()
    assert "written with other settings (run.lr: 1.0 there, 0.003 here)" in capsys.readouterr().out


def test_a_configuration_stopped_under_an_earlier_rule_cannot_train_again() -> None:
    rows = [_row(name, 0, budget, 0.1) for name in ("a", "b") for budget in (1, 2)]
    rows += [_row("b", 0, 4, 0.1)]  # a stopped at 2; b went on to 4
    _check_not_resumed_past_stop(rows, ["b", "new"], 4)  # b was trained at 4; new has no rows
    _check_not_resumed_past_stop(rows, ["a", "b"], 2)  # a was trained at 2 as well
    _check_not_resumed_past_stop(rows, ["a", "b"], None)
    with pytest.raises(SparseCircuitsError, match="a stopped training at 2 tokens"):
        _check_not_resumed_past_stop(rows, ["a", "b"], 4)


def test_budget_axis_turns_symlog_when_an_interval_reaches_zero() -> None:
    from matplotlib.figure import Figure

    positive, crossing = Figure().subplots(1, 2)
    set_log_or_symlog_y(positive, lows=[0.01, 0.2], means=[0.02, 0.3])
    set_log_or_symlog_y(crossing, lows=[-0.0001, 0.2], means=[0.0047, 0.3])
    assert positive.get_yscale() == "log"
    assert crossing.get_yscale() == "symlog"
    assert crossing.yaxis.get_transform().linthresh == pytest.approx(1e-3)
