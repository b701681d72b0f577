"""Rebuild the embedded model end to end: corpus -> tokenizer -> model -> fine-tune -> task numbers.

Usage: python scripts/embedded/build_all.py [--device cuda|cpu] [--steps N | --minutes M]
                                           [--skip-corpus] [--skip-tokenizer] [--skip-pretrain] [--skip-finetune]
                                           [--finetune-steps N] [--finetune-stream-mb MB]
Needs the Debian package python3.11-doc (apt-get install -y python3.11-doc) for the prose.
Everything is seeded. On cuda the run is step-based (9000 steps, the shipped recipe). On CPU
the default schedule runs on wall-clock time (--minutes), so the exact weights depend on the
machine's speed; pass --steps for a step-exact rerun (CPU is ~1-3k tokens/s: far too slow for
the shipped recipe).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> None:
    cmd = [sys.executable, str(HERE / script), *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=40.0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default=None,
        help="default: cuda when available (the shipped model was trained on cuda)",
    )
    p.add_argument("--skip-corpus", action="store_true")
    p.add_argument("--skip-tokenizer", action="store_true")
    p.add_argument(
        "--skip-finetune",
        action="store_true",
        help="stop after pretraining (no task-stream fine-tune)",
    )
    p.add_argument(
        "--skip-pretrain",
        action="store_true",
        help="fine-tune the model already in the package folder (after a --skip-finetune run)",
    )
    p.add_argument("--finetune-steps", type=int, default=FINETUNE[2], help="fine-tune steps")
    p.add_argument(
        "--finetune-stream-mb", type=float, default=12.0, help="megabytes of fine-tune task text"
    )
    p.add_argument("--eval-n", type=int, default=200, help="prompts per task in the evaluation")
    p.add_argument(
        "--eval-prose-contexts", type=int, default=200, help="held-out prose contexts (evaluation)"
    )
    args = p.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.skip_corpus:
        run("build_corpus.py", "--synthetic-frac", "0.4", "--seed", "0")
    if not args.skip_tokenizer:
        run("build_tokenizer.py", "--vocab", "4096")
    if args.device == "cuda":
        # The shipped model: 9000 steps x 128 contexts (64 of them from the synthetic stream)
        # = 147M tokens, ~2 min on one H200.
        budget = ["--steps", str(args.steps or 9000)]
        train = [
            "--batch",
            "128",
            "--synthetic-extra",
            "64",
            "--lr",
            "2e-3",
            "--warmup",
            "300",
            "--ckpt-minutes",
            "1",
            "--device",
            "cuda",
            "--threads",
            "8",
        ]
    else:
        budget = ["--steps", str(args.steps)] if args.steps else ["--minutes", str(args.minutes)]
        train = [
            "--batch",
            "16",
            "--synthetic-extra",
            "6",
            "--lr",
            "1e-3",
            "--warmup",
            "100",
            "--threads",
            "2",
        ]
    if not args.skip_pretrain:
        run("train_model.py", *budget, *train)
    if not args.skip_finetune:
        finetune(args.device, args.finetune_steps, args.finetune_stream_mb)
    run(
        "eval_model.py",
        *("--n", str(args.eval_n), "--prose-contexts", str(args.eval_prose_contexts)),
        *("--threads", "8" if args.device == "cuda" else "2"),
    )


# The shipped fine-tune: (task-stream seed, train seed, steps, lr, warmup).
FINETUNE = (4, 5, 1100, "5e-4", 30)


def finetune(device: str, steps: int, stream_mb: float) -> None:
    """Fine-tune the freshly trained model (in the package folder) in place on the task stream."""
    ship = HERE.parents[1] / "src" / "sparsecircuits" / "models" / "embedded"
    stream_seed, seed, _, lr, warmup = FINETUNE
    run("build_task_stream.py", "--mb", str(stream_mb), "--seed", str(stream_seed))
    run(
        "train_model.py",
        *("--steps", str(steps), "--batch", "32", "--synthetic-extra", "16"),
        *("--synthetic-file", "task_stream_tokens.npy", "--resume", str(ship)),
        *("--lr", lr, "--warmup", str(warmup), "--seed", str(seed), "--threads", "2"),
        *("--ckpt-minutes", "30", "--ship-dir", str(ship), "--device", device),
    )


if __name__ == "__main__":
    main()
