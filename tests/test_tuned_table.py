"""The "reference defaults vs tuned" table (issue 36, part 4; benchmarks/tuned_table.py): on the
committed results, and end to end on a fake search, its choice and a fake final measurement."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _module():
    spec = importlib.util.spec_from_file_location("tuned_table", ROOT / "benchmarks" / "tuned_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tuned_table"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["T-Vaccine", "Pharmacist", "Panacea", "Booster", "Vaccine", "RepNoise", "Lisa",
                                  "Surgery", "SafeLoRA", "Antidote"])
def test_the_search_s_reference_trial_is_the_reference_row_s_model(name):
    """The pair compares like with like: the search's reference trial trains the very stage
    (same hash) the reference row's results folder measured on the test split."""
    from clinic.experiment import Experiment

    d = next(d for d in _module().DEFENCES if d.name == name)
    planned = {s.dirname for s in Experiment.from_file(ROOT / d.search_file).plan() if s.kind == d.kind
               and (d.label is None or s.labels.get(d.field) == d.label)}
    committed = {s["dir"] for s in _module()._plan(ROOT / d.reference)["stages"] if s["kind"] == d.kind
                 and (d.label is None or s["labels"].get(d.field) == d.label)}
    assert planned & committed, f"{name}: the search's reference trial is not the model of {d.reference}"


def test_the_committed_reference_rows():
    rows = {(r[0], r[1]): r for r in _module().table_rows()}
    assert rows[("T-Vaccine", "reference defaults")][2] == "rho 3, active_layers 8, epochs 2"
    assert rows[("Booster", "reference defaults")][2] == "lam 5, alpha 0.1"
    assert rows[("Pharmacist", "reference defaults")][2] == "ratio 0.4, gamma 1"  # gamma: CurateConfig's default
    panacea = rows[("Panacea", "reference defaults")]
    assert panacea[2] == "rho 1" and float(panacea[5]) >= 60  # its salad, beside its low HS
    assert panacea[7].endswith("†")  # the guard from the key cells' re-run of the same model
    # never re-run with the guard: SFT's re-run (same labels, other data) must not stand in for it
    assert rows[("Pharmacist", "reference defaults")][7] == "—"
    for d in _module().DEFENCES:
        row = rows[(d.name, "reference defaults")]
        assert row[4] != "—" and row[6] != "—" and row[8] != "—", row  # HS and FA at p = 0.2, the cost


def test_a_chosen_and_measured_search_fills_its_tuned_row(tmp_path, data_dir, monkeypatch):
    """A fake search chooses vac-r1 (tests/test_choice.py's numbers); before its final measurement
    the row says so, afterwards it shows the test split's numbers at the chosen setting."""
    from _results import fake_experiment
    from test_choice import _fake_search, _search_experiment, _write_evaluation

    from clinic.cli import main

    module = _module()
    search = _fake_search(tmp_path / "search")
    assert main(["report", str(search), "--choose", "align"]) == 0
    choice = search / "report" / "choice.json"
    defence = dataclasses.replace(
        module.DEFENCES[0], name="Vaccine", label="vaccine", knobs=("rho",), config_class="clinic.methods.vaccine:VaccineConfig",
        reference=str(search), search=str(search), budget=4, choice=str(tmp_path / "missing.json"),
        tuned=str(tmp_path / "tuned" / "exp"))
    monkeypatch.setattr(module, "DEFENCES", (defence,))
    # the fake search is on validation and has no p = 0.1 reference 'vaccine' label: the row shows what it has
    assert module.table_rows()[1][2:] == ["not chosen yet", *["—"] * 6, "search: 2 of 2 trials measured on validation (budget 4)"]

    monkeypatch.setattr(module, "DEFENCES", (dataclasses.replace(defence, choice=str(choice)),))
    assert module.table_rows()[1][2] == "rho 1" and module.table_rows()[1][-1].endswith("test run pending")

    final = _search_experiment(split="test")
    final["align"]["methods"] = ["sft", {"name": "vaccine", "rho": 1.0, "label": "vac-r1"}]
    numbers = {"sft": {0.0: (6, 170, 120), 0.1: (40, 170, 180), 0.2: (90, 170, 180)},
               "vac-r1": {0.1: (24, 168, 178), 0.2: (50, 166, 150)}}
    fake_experiment(tmp_path / "tuned", final,
                    lambda stage, folder: _write_evaluation(folder, *numbers[stage.labels["align"]][stage.labels["p"]]))
    tuned = module.table_rows()[1]
    assert tuned[2] == "rho 1" and tuned[3].startswith("12.0 [") and tuned[4].startswith("25.0 [")
    assert tuned[6].startswith("83.0 [") and tuned[7].startswith("75.0 [") and tuned[-1].endswith("(test)")
    choice.write_text(json.dumps({**json.loads(choice.read_text()), "chosen": None}))
    assert module.table_rows()[1][2] == "no trial kept capability"
    # a choice file written while trials were still running is no choice: the progress shows
    choice.write_text(json.dumps({**json.loads(choice.read_text()), "incomplete": ["vac-r3"]}))
    assert module.table_rows()[1][2] == "not chosen yet"


def test_every_search_file_has_its_row():
    """A search written in configs/ is a defence the table must show (Pharmacist's trials are one
    experiment each: its reference trial's file stands for them)."""
    searches = {p.name for p in (ROOT / "configs").glob("search-*.yaml") if not p.name.startswith("search-pharmacist-")}
    listed = {Path(d.search_file).name for d in _module().DEFENCES}
    assert searches | {"search-pharmacist-r0.4-g1-smollm2.yaml"} == listed


def test_a_final_measurement_exported_seed_by_seed_says_which_seeds_it_holds():
    """Seeds are exported one at a time (search_trials.py --by seed): a row pooled from one of
    three seeds must not read as the final measurement."""
    note = _module().seed_note
    plan = {"stages": [{"labels": {"seed": s}} for s in (0, 1, 2)]}
    one = {0.1: {"seeds": [0]}, 0.2: {"seeds": [0]}}
    assert note(one, plan) == "test, seed 0 of 3 so far; seeds 1, 2 pending"
    assert note({0.1: {"seeds": [0, 1]}, 0.2: {"seeds": [0]}}, plan).startswith("test, seed 0 of 3")  # the fewest
    assert note({p: {"seeds": [0, 1, 2]} for p in (0.1, 0.2)}, plan) == "test, seeds 0, 1, 2 pooled"
    assert note({}, plan) == "test, no seed of 3 so far; seeds 0, 1, 2 pending"
    assert note(one, {"stages": [{"labels": {"seed": 0}}]}) == "test"
