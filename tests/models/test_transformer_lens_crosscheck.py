"""Every hook against TransformerLens on the same weights (scripts/crosscheck), when an
environment with transformer_lens exists: `.venv-bench-ct` (`make bench-env`) or the python named
by SPARSECIRCUITS_TRANSFORMER_LENS_PYTHON."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from testkit import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "crosscheck" / "hooks_vs_transformer_lens.py"


def _transformer_lens_python() -> Path | None:
    named = os.environ.get("SPARSECIRCUITS_TRANSFORMER_LENS_PYTHON")
    if named:
        return Path(named)
    venv = ROOT / ".venv-bench-ct"
    return venv / "bin" / "python" if (venv / ".installed").is_file() else None


@pytest.mark.slow
def test_every_shared_hook_equals_transformer_lens(tmp_path: Path) -> None:
    python = _transformer_lens_python()
    if python is None:
        pytest.skip("no TransformerLens environment (make bench-env builds .venv-bench-ct)")
    script = load_script(SCRIPT)
    script.dump(tmp_path)
    # the TransformerLens side imports nothing of ours: a clean environment without PYTHONPATH
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), str(SCRIPT), "compare", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "all hooks agree" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    for family in ("gpt2", "gpt_neox", "llama"):
        assert report[family]["status"] == "ok", report[family]
        diffs = report[family]["max_abs_diff"]
        kinds = (
            "hook_mlp_in",
            "ln2.hook_normalized",
            "mlp.hook_in",
            "mlp.hook_out",
            "hook_mlp_out",
        )
        for hook in (f"blocks.1.{kind}" for kind in kinds):
            assert diffs[hook] <= 1e-5, (family, hook, diffs[hook])
