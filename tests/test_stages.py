"""The stage contract (clinic.stages): every registered kind honours it, a new kind needs no
change outside its own module (a scratch kind runs through the runner, the estimator and
--dry-run), and nothing outside stages/ dispatches on a kind's name."""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from clinic.errors import ClinicError
from clinic.stages import STAGE_KINDS, StageKind, execute, get_stage_kind
from clinic.stages.base import MODEL_INPUTS, ROLES

SRC = Path(__file__).resolve().parents[1] / "src" / "clinic"


@pytest.mark.parametrize("name", STAGE_KINDS.names())
def test_every_stage_kind_honours_the_contract(name):
    kind = get_stage_kind(name)
    assert kind.name == name and kind.role in ROLES and kind.model in MODEL_INPUTS
    assert dataclasses.is_dataclass(kind.config) and kind.summary
    for hook in (kind.run, kind.prepare, kind.inputs, kind.peer, kind.cost):
        assert callable(hook)
    assert callable(kind.from_plan), f"{name}: the runner cannot build it from a plan"
    if kind.role == "subset":
        assert kind.rows is not None
    if kind.role == "model":
        assert kind.seconds, f"{name}: the report's cost column needs the metric holding its seconds"


def test_the_registry_names_a_near_kind():
    with pytest.raises(ClinicError, match="did you mean 'evaluate'"):
        get_stage_kind("evalute")


def test_execute_refuses_settings_of_another_kind(tmp_path):
    from clinic.stages.evaluate import EvalConfig

    with pytest.raises(TypeError, match="stage sink takes a SinkConfig"):
        execute("sink", EvalConfig(), output=tmp_path / "x", model="tiny-random-llama")
    assert not (tmp_path / "x").exists()


# -- no dispatch on kind names outside stages/ ----------------------------------------------------


def kind_comparisons(root: Path, names: set[str]) -> list[str]:
    """``file:line`` of every comparison of a stage's kind with a kind's name (``x.kind == "align"``,
    ``stage["kind"] in ("align", ...)``, ``kind != "sink"``) in the modules under ``root``."""
    found = []

    def is_kind(node) -> bool:
        return ((isinstance(node, ast.Attribute) and node.attr == "kind")
                or (isinstance(node, ast.Name) and node.id == "kind")
                or (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "kind"))

    def literals(node) -> set:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(is_kind(s) for s in sides) and any(literals(s) & names for s in sides):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_kind_dispatch_outside_stages():
    names = set(STAGE_KINDS.names())
    outside = [hit for hit in kind_comparisons(SRC, names) if not hit.startswith("stages/")]
    assert not outside, f"dispatch on a stage kind's name outside clinic/stages/ (ask the kind instead): {outside}"


def test_the_kind_check_sees_each_form(tmp_path):
    (tmp_path / "m.py").write_text('a = s.kind == "align"\nb = s["kind"] in ("sink", "x")\nc = kind != "evaluate"\n'
                                   'd = s.kind == "other"\n')
    assert kind_comparisons(tmp_path, {"align", "sink", "evaluate"}) == ["m.py:1", "m.py:2", "m.py:3"]


# -- a scratch kind, registered in the test, through runner, estimator and dry run ----------------


@dataclass
class ScratchConfig:
    words: int = field(default=3, metadata={"help": "words to write"})


def _scratch_run(ctx):
    ctx.run.write_json("metrics.json", {"words": ctx.config.words, "scratch_seconds": 4.0})
    ctx.run.write_yaml("config.yaml", {"stage": "scratch", "words": ctx.config.words})
    (ctx.run.path / "words.txt").write_text(" ".join(["word"] * ctx.config.words))


@pytest.fixture
def scratch_kind(monkeypatch):
    kind = StageKind(
        "scratch", ScratchConfig, _scratch_run, "writes words", role="analysis", model="none",
        from_plan=lambda stage, parent, model: (ScratchConfig(**stage.config), None),
        peer=lambda config, metrics: (("scratch", config.get("words")), metrics["scratch_seconds"]),
        cost=lambda stage, store, pace: ({"seconds": 7.0 * len(pace.get(("scratch", stage.config["words"]), [])),
                                          "basis": "scratch peers"} if pace.get(("scratch", stage.config["words"]))
                                         else None))
    monkeypatch.setitem(STAGE_KINDS._entries, "scratch", kind)
    monkeypatch.setitem(STAGE_KINDS._order, "scratch", 99)
    return kind


def test_a_scratch_kind_runs_through_the_runner_the_estimator_and_dry_run(tmp_path, scratch_kind, capsys, data_dir,
                                                                         monkeypatch):
    from clinic.experiment import Experiment, run_experiment
    from clinic.experiment.estimate import plan_estimate
    from clinic.experiment.plan import Stage

    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump({"name": "s", "model": "tiny-random-llama", "align": {"methods": ["none"]},
                                        "evaluate": {"base": False}}))
    scratch = [Stage("scratch", "a", {"words": 2}), Stage("scratch", "b", {"words": 5})]
    real_plan = Experiment.plan
    monkeypatch.setattr(Experiment, "plan", lambda self: real_plan(self) + scratch)
    root = run_experiment(exp_file, tmp_path / "run", dry_run=True)
    out = capsys.readouterr().out
    assert "[todo] scratch-a-" in out and "2 scratch" in out
    root = run_experiment(exp_file, tmp_path / "run")
    plan = json.loads((root / "plan.json").read_text())
    folders = [root / "stages" / s["dir"] for s in plan["stages"] if s["kind"] == "scratch"]
    assert [(f / "words.txt").read_text().count("word") for f in folders] == [2, 5]
    assert all((f / "DONE").exists() for f in folders)
    # the estimator takes the finished scratch stages as peers of a new one with the same words
    more = Stage("scratch", "c", {"words": 5})
    found, summary = plan_estimate([more], root / "stages", lambda s: False)
    assert found[more.dirname] == {"seconds": 7.0, "basis": "scratch peers"} and "1 of 1 stages" in summary
