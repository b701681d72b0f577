"""Measure the shipped embedded model with `sparsecircuits.tasks.run_tasks` on the dev and test
splits (each with its documented prompt seed).

Writes src/sparsecircuits/models/embedded/eval_results.json (`{"dev": ..., "test": ...,
"settings": ...}`, the model card's task table) and prints it.
Usage: python scripts/embedded/eval_model.py [--model DIR] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sparsecircuits.models.embedded import embedded_dir  # noqa: E402
from sparsecircuits.tasks import run_tasks  # noqa: E402
from sparsecircuits.tasks.common import DEFAULT_SEEDS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=embedded_dir())
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--prose-contexts", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tok = AutoTokenizer.from_pretrained(embedded_dir())
    t0 = time.time()
    res: dict[str, Any] = {
        split: run_tasks(
            lambda x: model(input_ids=x).logits,
            tok,
            n=args.n,
            split=split,
            prose_contexts=args.prose_contexts,
        )
        for split in ("dev", "test")
    }
    res["settings"] = {
        "n": args.n,
        "seeds": {split: DEFAULT_SEEDS[split] for split in ("dev", "test")},
        "prose_contexts": args.prose_contexts,
        "seconds": round(time.time() - t0, 1),
    }
    print(json.dumps(res, indent=2))
    if not args.no_write and args.model == embedded_dir():
        (embedded_dir() / "eval_results.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
