"""Rebuild the embedded model end to end: corpus -> tokenizer -> model -> task numbers.

Usage: python scripts/embedded/build_all.py [--minutes 40] [--skip-corpus] [--skip-tokenizer]
Needs the Debian package python3.11-doc (apt-get install -y python3.11-doc) for the prose.
Everything is seeded; the training schedule runs on wall-clock time (--minutes), so the number
of steps, and therefore the exact weights, depend on the machine's speed. Use --steps for a
step-exact rerun.
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
    p.add_argument("--skip-corpus", action="store_true")
    p.add_argument("--skip-tokenizer", action="store_true")
    args = p.parse_args()
    if not args.skip_corpus:
        run("build_corpus.py", "--synthetic-frac", "0.4", "--seed", "0")
    if not args.skip_tokenizer:
        run("build_tokenizer.py", "--vocab", "4096")
    budget = ["--steps", str(args.steps)] if args.steps else ["--minutes", str(args.minutes)]
    run("train_model.py", *budget, "--batch", "16", "--synthetic-extra", "6", "--lr", "1e-3",
        "--warmup", "100", "--threads", "2")
    run("eval_model.py", "--n", "200", "--seed", "0")


if __name__ == "__main__":
    main()
