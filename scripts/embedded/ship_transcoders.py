"""Copy the trained embedded-model transcoders into the package and record their metrics.

Usage (after `sparsecircuits train --config configs/embedded_transcoders.yaml`):
    python scripts/embedded/ship_transcoders.py [--run runs/embedded_transcoders]

Writes src/sparsecircuits/models/embedded/transcoders/layer{L}/ (SAELens layout, no checkpoint
state) and transcoders/metrics.json (L0, FVU, CE loss recovered per layer on held-out text).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from sparsecircuits.evaluation import evaluate_dictionaries
from sparsecircuits.models import load_model
from sparsecircuits.pipelines import eval_batches, load_dictionaries

ROOT = Path(__file__).resolve().parents[2]
SHIP = ROOT / "src" / "sparsecircuits" / "models" / "embedded" / "transcoders"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default=str(ROOT / "runs" / "embedded_transcoders"))
    parser.add_argument(
        "--contexts", type=int, default=64, help="held-out contexts for the metrics"
    )
    args = parser.parse_args()
    source = Path(args.run) / "dictionaries"
    shutil.rmtree(SHIP, ignore_errors=True)
    SHIP.mkdir(parents=True)
    for folder in sorted(source.iterdir()):
        shutil.copytree(folder, SHIP / folder.name)
    adapter = load_model("embedded", device="cpu")
    dictionaries = load_dictionaries([str(SHIP)], device="cpu")
    records = evaluate_dictionaries(
        adapter, dictionaries, eval_batches(adapter, "embedded", 128, args.contexts)
    )
    keep = (
        "name",
        "hook_in",
        "hook_out",
        "d_sae",
        "k",
        "l0",
        "fvu",
        "explained_variance",
        "dead_frac",
        "ce_loss_clean",
        "ce_loss_spliced",
        "ce_loss_zero_ablated",
        "ce_loss_recovered",
        "kl_div",
    )
    table = [{k: r[k] for k in keep} for r in records]
    (SHIP / "metrics.json").write_text(json.dumps(table, indent=2) + "\n")
    for r in table:
        print(
            f"{r['name']}: L0 {r['l0']:.1f}  FVU {r['fvu']:.3f}  "
            f"CE increase {r['ce_loss_spliced'] - r['ce_loss_clean']:.4f}  KL {r['kl_div']:.4f}  "
            f"CE recovered {100 * r['ce_loss_recovered']:.1f}%"
        )


if __name__ == "__main__":
    main()
