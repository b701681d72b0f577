"""`sparsecircuits paths` and `case-study` subcommands on a tiny model with saved transcoders."""

from __future__ import annotations

import argparse
import json

import pytest

from sparsecircuits.cli import case_study as case_study_cli
from sparsecircuits.cli import paths as paths_cli
from sparsecircuits.cli.targets import parse_target_spec
from sparsecircuits.dictionaries import save_dictionary
from sparsecircuits.errors import SparseCircuitsError
from testkit import random_transcoders


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsecircuits")
    sub = parser.add_subparsers(dest="command", required=True)
    paths_cli.register(sub)
    case_study_cli.register(sub)
    return parser


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model_dir):
    from sparsecircuits.models import load_model

    folder = tiny_model_dir("gpt2")
    adapter = load_model(folder, device="cpu")
    tc_dir = tmp_path_factory.mktemp("tcs")
    for layer, tc in random_transcoders(adapter, seed=3).items():
        save_dictionary(tc, tc_dir / f"layer{layer}")
    return folder, tc_dir


@pytest.mark.parametrize("target", ['logit-diff:" the"," a"', "feature:2:5", "logit:7"])
def test_paths_command_writes_graph_and_verification(saved, tmp_path, target, capsys):
    model_dir, tc_dir = saved
    out = tmp_path / "paths"
    args = _parser().parse_args(
        [
            "paths",
            "--model",
            str(model_dir),
            "--transcoders",
            str(tc_dir),
            "--prompt",
            "the cat saw the house",
            "--prompt",
            "my friend built a",
            "--row",
            "1",
            "--target",
            target,
            "--num-iters",
            "2",
            "--num-branches",
            "4",
            "--rank",
            "abs",
            "--out",
            str(out),
            "--verify-top",
            "5",
        ]
    )
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["verification"]["exact"]["max_rel_error"] < 1e-4
    graph = json.loads((out / "graph.json").read_text())
    assert graph["metadata"]["target_spec"] == target and graph["edges"]
    assert (out / "graph.png").stat().st_size > 0 and (out / "paths.txt").read_text().strip()
    assert set(json.loads((out / "verification.json").read_text())) == {"exact", "graph", "live"}


def test_bad_target_specs_are_user_errors():
    for spec in ("logit", "feature:1", "logit-diff:1", "neuron:1:2", "greater-than:3"):
        with pytest.raises(SparseCircuitsError, match="cannot parse target"):
            parse_target_spec(spec)
    assert parse_target_spec('logit-diff:" 40"," 20"') == ("logit-diff", [" 40", " 20"])
    assert parse_target_spec("feature:3:17") == ("feature", [3, 17])
    assert parse_target_spec("greater-than-logits") == ("greater-than-logits", [])


def test_case_study_parser_has_greater_than():
    args = _parser().parse_args(["case-study", "greater-than", "--out", "x", "--n-prompts", "8"])
    assert args.func is case_study_cli.run_greater_than_cli and args.n_prompts == 8
