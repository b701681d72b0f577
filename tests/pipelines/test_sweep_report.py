"""The sweep's table puts the CE increase and KL beside CE loss recovered, also for the
matched-L0 pairs."""

from __future__ import annotations

from pathlib import Path

from sparsecircuits.pipelines.sweep import write_sweep_report


def _record(kind: str, spliced: float, kl: float) -> dict:
    return {"name": f"{kind}-topk-32", "kind": kind, "architecture": "topk", "k": 32,
            "l0": 32.0, "fvu": 0.3, "ce_loss_clean": 2.5, "ce_loss_spliced": spliced,
            "ce_loss_recovered": 0.8, "kl_div": kl, "dead_frac": 0.0}  # fmt: skip


def test_sweep_table_reports_ce_increase_and_kl(tmp_path: Path) -> None:
    records = [_record("transcoder", 2.625, 0.1875), _record("sae", 2.5625, 0.09375)]
    write_sweep_report(tmp_path, records, seconds=1.0)
    table = (tmp_path / "table.md").read_text()
    assert "| CE spliced | CE increase | KL | CE recovered |" in table
    assert "| 2.625 | 0.1250 | 0.1875 | 80.0% |" in table  # transcoder: 2.625 - 2.5
    assert "| 2.562 | 0.0625 | 0.0938 | 80.0% |" in table
    assert "| 32 | 2.625 | 2.562 | 0.1875 | 0.0938 | 80.0% | 80.0% | no |" in table
