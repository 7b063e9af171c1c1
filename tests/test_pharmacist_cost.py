"""benchmarks/pharmacist_cost.py: the end-to-end arithmetic over measured parts (no timing asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_protocol_step_counts():
    from pharmacist_cost import protocol_steps

    assert protocol_steps(1536, 2, 8) == 384  # the protocol's full alignment
    assert protocol_steps(615, 2, 8) == 154  # r = 0.4 of the refusals and of the Alpaca rows
    assert protocol_steps(9, 1, 8) == 2  # a last partial batch is a step


def test_pharmacist_cost_smoke(tmp_path, data_dir):
    from pharmacist_cost import main

    out = tmp_path / "cost.json"
    result = main(["--model", "tiny-random-llama", "--n-candidates", "8", "--steps", "2", "--grad-layers", "0", "1",
                   "--max-length", "512", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    proto = result["protocol"]
    assert (proto["subset_rows"], proto["full_steps"], proto["subset_steps"]) == (615, 384, 154)
    assert len(result["end_to_end"]) == 4  # 2 methods x 2 gradient depths
    for row in result["end_to_end"]:
        step = result["alignment_steps"][row["method"]]["step_seconds"]
        selector = result["selectors"][str(row["grad_layers"])]
        assert row["full_alignment_s"] == pytest.approx(384 * step, abs=0.1)
        assert row["end_to_end_ratio"] == pytest.approx(
            (selector["protocol_selector_seconds"] + 154 * step) / (384 * step), abs=2e-3)
        assert row["meets_goal"] == (row["end_to_end_ratio"] <= row["goal"] + 5e-4)
        assert result["alignment_steps"][row["method"]]["steps_timed"] == 2
    for selector in result["selectors"].values():
        assert selector["protocol_selector_seconds"] == pytest.approx(
            selector["fixed_seconds"] + 1024 * selector["per_candidate_seconds"], rel=0.02, abs=0.5)
