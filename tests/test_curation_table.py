"""benchmarks/curation_table.py, on the committed results folders (no run needed)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_full_data_row_reads_the_committed_cell_b():
    from curation_table import rows

    table = rows(ROOT / "results" / "calib-b", [], "harm-ce")
    assert len(table) == 1
    full = table[0]
    assert full["data"] == "full data" and (full["align_rows"], full["align_steps"]) == (1536, 384)
    # cell B's figures as docs/protocol.md cites them (harm-ce, n = 200)
    assert (full["aligned"], full["p=0.1"], full["p=0.2"]) == ("2.0 [0.8, 5.0]", "20.5 [15.5, 26.6]", "45.5 [38.7, 52.4]")


def test_a_curated_run_is_paired_with_the_full_data(tmp_path):
    """A copy of cell B posing as a curated run: every difference is zero (Newcombe's interval
    around a zero difference with no discordant pair is still about +-2 points at n = 200)."""
    import json
    import shutil

    from curation_table import rows

    copy = tmp_path / "curated"
    shutil.copytree(ROOT / "results" / "calib-b", copy)
    stage = copy / "store" / "curate-pharmacist-000000000000"
    stage.mkdir()
    (stage / "metrics.json").write_text(json.dumps({"selector": "pharmacist", "k": 410, "n_candidates": 1024,
                                                    "selector_seconds": 12.5}))
    full, curated = rows(ROOT / "results" / "calib-b", [copy], "harm-ce")
    assert curated["data"] == "pharmacist" and curated["selector_seconds"] == 12.5 and curated["k"] == 410
    for key in ("aligned", "p=0.1", "p=0.2"):
        diff = curated[f"{key} - full"]
        assert diff.startswith("+0.0 [-") and diff.endswith("], p = 1"), diff
        assert curated[key] == full[key]
