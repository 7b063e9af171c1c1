"""Helpers for tests that read or alter a committed results folder (results/<name>, whose plan's
stages live in the results tree's shared store, results/store)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def stage_dir(folder: Path, name: str) -> Path:
    """Where the stage ``name`` of ``folder``'s plan lives (its plan's store, shared or its own)."""
    plan = json.loads((folder / "plan.json").read_text())
    return folder / plan["store"] / name


def standalone_copy(folder: Path, dest: Path) -> Path:
    """A copy of ``folder`` with its own store holding the plan's finished stages, so a test can
    alter the copy's stages without touching the shared store."""
    shutil.copytree(folder, dest)
    plan = json.loads((folder / "plan.json").read_text())
    for stage in plan["stages"]:
        src = folder / plan["store"] / stage["dir"]
        if (src / "DONE").exists():
            shutil.copytree(src, dest / "store" / stage["dir"])
    (dest / "plan.json").write_text(json.dumps({**plan, "store": "store"}, indent=1) + "\n")
    return dest


def add_stage(folder: Path, name: str, kind: str, metrics: dict) -> Path:
    """A finished stage ``name`` with ``metrics`` in ``folder``'s store, named in its plan."""
    plan_file = folder / "plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {"store": "store", "stages": []}
    stage = folder / plan["store"] / name
    stage.mkdir(parents=True)
    (stage / "metrics.json").write_text(json.dumps(metrics))
    (stage / "DONE").write_text("")
    plan["stages"].append({"dir": name, "kind": kind, "hash": name.rsplit("-", 1)[-1], "labels": {}})
    plan_file.write_text(json.dumps(plan, indent=1) + "\n")
    return stage


def fake_experiment(tmp_path: Path, experiment: dict, write_evaluation) -> Path:
    """An experiment directory planned from ``experiment`` (no training): each evaluate stage's
    folder is written by ``write_evaluation(stage, folder)``."""
    from clinic.experiment import Experiment, write_plan

    exp = Experiment.from_dict(experiment)
    stages = exp.plan()
    root, store = tmp_path / "exp", tmp_path / "exp" / "stages"
    store.mkdir(parents=True)
    write_plan(root, store, exp, stages)
    for stage in stages:
        if stage.kind == "evaluate":
            write_evaluation(stage, store / stage.dirname)
    return root
