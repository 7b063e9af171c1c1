"""clinic.experiment.plan.select and ``clinic run --only``: a part of a grid, by the stages' labels,
with the stages it needs; the hashes stay the file's own."""

from __future__ import annotations

import pytest
import yaml

from clinic.errors import ClinicError
from clinic.experiment import Experiment
from clinic.experiment.plan import select


def _raw() -> dict:
    return {"name": "grid", "model": "tiny-random-llama", "seeds": [0, 1],
            "curate": {"selector": "random", "ratio": 0.5, "options": {"n_candidates": 20}},
            "align": {"methods": ["sft", "vaccine"], "n": 10, "train": {"batch_size": 4, "epochs": 1}},
            "finetune": {"methods": ["sft"], "tasks": ["sst2"], "n": 12, "poison_ratios": [0, 0.1],
                         "train": {"batch_size": 4, "epochs": 1}},
            "evaluate": {"n_prompts": 4, "judges": ["keyword"], "n_task": 4, "aligned": True, "base": True}}


def test_a_seed_of_one_alignment_with_what_it_needs():
    stages = Experiment.from_dict(_raw()).plan()
    chosen = select(stages, ["seed=1", "align=vaccine"])
    # by hand: seed 1's curated subset (needed by the alignment, though its align label is "none"),
    # the Vaccine alignment and its evaluation, two fine-tunes (p = 0, 0.1) and their evaluations
    expected = [s for s in stages if s.labels["seed"] == 1 and (s.kind == "curate" or s.labels["align"] == "vaccine")]
    assert [s.kind for s in expected].count("curate") == 1 and len(expected) == 7
    assert chosen == expected  # plan order, each once
    for stage in chosen:  # everything a chosen stage needs is chosen
        assert stage.parent is None or stage.parent in chosen
    # two values of one key are alternatives; keys combine
    both = select(stages, ["p=0", "p=0.1", "seed=0"])
    assert {(s.labels["p"], s.labels["seed"]) for s in both if s.kind == "finetune"} == {(0.0, 0), (0.1, 0), } \
        and len([s for s in both if s.kind == "finetune"]) == 4  # two alignments x two p
    assert select(stages, ["stage=base"]) == [s for s in stages if s.labels.get("stage") == "base"]


@pytest.mark.parametrize("only, message", [
    (["sed=1"], "--only: no stage has a label 'sed' (did you mean 'seed'?)"),
    (["seed=5"], "--only seed=5: no stage of the plan has it; the plan has 0, 1"),
    (["align=vacine"], "--only align=vacine: no stage of the plan has it (did you mean 'vaccine'?)"),
    (["seed"], "--only 'seed': expected KEY=VALUE"),
])
def test_a_filter_that_matches_nothing_is_named(only, message):
    with pytest.raises(ClinicError) as exc:
        select(Experiment.from_dict(_raw()).plan(), only)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_clinic_run_only_lists_and_runs_the_chosen_part(tmp_path, capsys):
    from clinic.cli import main

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_raw()))
    stages = Experiment.from_dict(_raw()).plan()
    assert main(["run", str(path), "--output", str(tmp_path / "exp"), "--dry-run", "--only", "seed=1",
                 "--only", "align=vaccine"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[1] for line in out.splitlines() if line.startswith("  [todo]")]
    assert listed == [s.dirname for s in select(stages, ["seed=1", "align=vaccine"])]
    assert f"7 of the {len(stages)} stages (0 already done)" in out
    assert main(["run", str(path), "--output", str(tmp_path / "exp"), "--dry-run", "--only", "seed=7"]) == 2
    assert capsys.readouterr().err.startswith("clinic: error: --only seed=7: no stage of the plan has it")
    assert not (tmp_path / "exp").exists()


def test_clinic_run_only_runs_the_chosen_stages_and_plans_them_all(tmp_path, monkeypatch):
    """The runner's stage function replaced by one that only marks a stage done: the calls are the
    chosen part, in plan order; plan.json holds the whole grid (the report covers it)."""
    import json

    from clinic.experiment import runner, run_experiment

    calls: list = []

    def fake(store, exp, stage, judges):
        calls.append(stage.dirname)
        (store / stage.dirname).mkdir(parents=True)
        (store / stage.dirname / "DONE").write_text("")

    monkeypatch.setattr(runner, "run_stage", fake)

    def no_wait(seconds):  # no other runner here: waiting means a chosen stage lacks its parent
        raise AssertionError("the runner waits for a stage nobody runs")

    monkeypatch.setattr(runner, "_wait", no_wait)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_raw()))
    stages = Experiment.from_dict(_raw()).plan()
    root = run_experiment(path, tmp_path / "exp", only=("seed=0", "p=0.1"))
    assert calls == [s.dirname for s in select(stages, ["seed=0", "p=0.1"])]
    assert {s.kind for s in select(stages, ["seed=0", "p=0.1"])} == {"curate", "align", "finetune", "evaluate"}
    assert [s["dir"] for s in json.loads((root / "plan.json").read_text())["stages"]] == [s.dirname for s in stages]
