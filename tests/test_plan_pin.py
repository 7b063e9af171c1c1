"""Every committed result keeps its stage hashes: each results/*/plan.json is recomputed from the
experiment.yaml beside it (the stage folders, their parents, configs and labels), so a change to
the plan, a block dataclass, a default or a validator that would re-key the store fails here
before it orphans a published stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinic.experiment import Experiment

RESULTS = Path(__file__).resolve().parents[1] / "results"
FOLDERS = sorted(p.parent.name for p in RESULTS.glob("*/experiment.yaml"))


def test_every_results_folder_has_a_plan():
    assert len(FOLDERS) >= 20
    assert all((RESULTS / name / "plan.json").exists() for name in FOLDERS)


@pytest.mark.parametrize("name", FOLDERS)
def test_plan_recomputes_from_its_experiment_file(name, data_dir):
    folder = RESULTS / name
    plan = json.loads((folder / "plan.json").read_text())
    stages = Experiment.from_file(folder / "experiment.yaml").plan()
    recomputed = {s.dirname: s for s in stages}
    recorded = {s["dir"]: s for s in plan["stages"]}
    assert sorted(recomputed) == sorted(recorded)
    for dirname, stage in recomputed.items():
        rec = recorded[dirname]
        assert rec["hash"] == stage.hash and rec["kind"] == stage.kind
        assert rec["parent"] == (stage.parent.hash if stage.parent else None), dirname
        assert json.loads(json.dumps(stage.config, default=str)) == rec["config"], dirname
