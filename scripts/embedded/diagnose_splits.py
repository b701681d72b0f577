"""Which structural change of the test split moves the embedded model: a crossed grid per task.

Each cell crosses one dev factor with one test factor (prompts built like the task generators,
n prompts per cell, a diagnostic seed of its own, so no cell is the test split's prompt set):

* greater-than: frame (dev frame / test frames) x start years (dev pairs / test centuries and
  endings), nouns of the frame's split;
* IOI: templates (dev / test, with that split's places and objects) x names (train / dev / test);
* docstring: function shape (method / test shape) x parameter names (train / dev / test).

Usage: python scripts/embedded/diagnose_splits.py [--n 200] [--seed 11]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sparsecircuits.models.embedded import embedded_dir  # noqa: E402
from sparsecircuits.tasks import (  # noqa: E402
    answer_logits,
    docstring,
    docstring_accuracy,
    greater_than,
    greater_than_prob_diff,
    ioi,
    ioi_logit_diff,
)
from sparsecircuits.tasks.common import build_prompts, single_token_id  # noqa: E402


def greater_than_cell(tok, forward: Callable, frames, years, nouns, n: int, seed: int) -> float:
    """Mean probability difference of `n` prompts drawn from the given frames, years, nouns."""
    rng = random.Random(seed)
    texts, yys = [], []
    for _ in range(n):
        xx, yy = rng.choice(years)
        texts.append(rng.choice(frames).format(noun=rng.choice(nouns), xx=xx, yy=f"{yy:02d}"))
        yys.append(yy)
    ids = greater_than.year_token_ids(tok)
    p = build_prompts(tok, texts, texts, True, {}, yy=yys, year_ids=ids)
    assert p.yy is not None
    return float(greater_than_prob_diff(answer_logits(forward, p), p.yy, ids).mean())


def ioi_cell(tok, forward: Callable, templates, places, objects, names, n: int, seed: int):
    """(mean logit diff, accuracy) of `n` prompts, half ABBA and half BABA."""
    rng = random.Random(seed)
    texts, io_ids, s_ids = [], [], []
    for i in range(n):
        io, s = rng.sample(names, 2)
        order = "ABBA" if i % 2 == 0 else "BABA"
        full = ioi.ioi_sentence(
            rng.choice(templates), io, s, rng.choice(places), rng.choice(objects), order
        )
        texts.append(full[: -len(" " + io)])
        io_ids.append(single_token_id(tok, " " + io))
        s_ids.append(single_token_id(tok, " " + s))
    p = build_prompts(tok, texts, texts, True, {}, io_ids=io_ids, s_ids=s_ids)
    assert p.io_ids is not None and p.s_ids is not None
    diff = ioi_logit_diff(answer_logits(forward, p), p.io_ids, p.s_ids)
    return float(diff.mean()), float((diff > 0).float().mean())


def docstring_cell(tok, forward: Callable, test_shape: bool, params, n: int, seed: int) -> float:
    """Top-1 accuracy of `n` prompts (2 prefix, 3 matching, 1 suffix argument)."""
    rng = random.Random(seed)
    texts, correct = [], []
    for _ in range(n):
        args = rng.sample(params, 6)
        matching = args[2:5]
        shape = docstring.annotated_function_lines if test_shape else docstring.method_lines
        lines = shape(rng, args, matching[:-1])
        texts.append("\n".join([*lines, "    :param"]))
        correct.append(single_token_id(tok, " " + matching[-1]))
    p = build_prompts(tok, texts, texts, True, {}, correct_ids=correct)
    assert p.correct_ids is not None
    return float(docstring_accuracy(answer_logits(forward, p), p.correct_ids).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(embedded_dir())
    model = AutoModelForCausalLM.from_pretrained(embedded_dir()).eval()

    def forward(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids).logits

    n, seed = args.n, args.seed
    out: dict[str, dict[str, object]] = {"greater_than": {}, "ioi": {}, "docstring": {}}
    frames = {
        "dev frame": ([greater_than.EVAL_TEMPLATE], greater_than.NOUNS_HELDOUT),
        "test frames": (greater_than.TEST_TEMPLATES, greater_than.NOUNS_TEST),
    }
    years = {
        "dev years": greater_than._year_pool("dev"),
        "test years": greater_than._year_pool("test"),
    }
    for fname, (fr, nouns) in frames.items():
        for yname, pool in years.items():
            value = greater_than_cell(tok, forward, fr, pool, nouns, n, seed)
            out["greater_than"][f"{fname}, {yname}"] = round(value, 3)
    templates = {
        "dev templates": (ioi.TEMPLATES_HELDOUT, ioi.PLACES_HELDOUT, ioi.OBJECTS_HELDOUT),
        "test templates": (ioi.TEMPLATES_TEST, ioi.PLACES_TEST, ioi.OBJECTS_TEST),
    }
    names = {"train": ioi.NAMES_TRAIN, "dev": ioi.NAMES_HELDOUT, "test": ioi.NAMES_TEST}
    for tname, (tpl, places, objects) in templates.items():
        for nname, pool in names.items():
            ld, acc = ioi_cell(tok, forward, tpl, places, objects, pool, n, seed)
            out["ioi"][f"{tname}, {nname} names"] = [round(ld, 2), round(acc, 3)]
    params = {split: docstring.docstring_params(tok, split) for split in ("train", "dev", "test")}
    for shape in ("method", "test shape"):
        for pname, pool in params.items():
            acc = docstring_cell(tok, forward, shape == "test shape", pool, n, seed)
            out["docstring"][f"{shape}, {pname} names"] = round(acc, 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
