"""Every registry of clinic (methods, repairs, judges, selectors, tasks, stage kinds, presets) is a
:class:`clinic.registry.Registry` filled by one style (a ``register_*`` decorator in the entry's
own module), names a near name for a typo, and every entry honours its registry's contract.
Methods have their own contract class (tests/test_contract.py), stage kinds theirs
(tests/test_stages.py); this file holds the rest and what all registries share."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from clinic.curation.base import SELECTORS
from clinic.data.tasks import TASKS, Task, get_task, scored_tasks
from clinic.errors import ClinicError
from clinic.evaluation.judges import JUDGES, get_judge
from clinic.evaluation.judges.base import Judge
from clinic.methods.registry import METHODS
from clinic.modeling.training import PRESETS, TrainConfig
from clinic.registry import Registry
from clinic.repair.base import REPAIRS
from clinic.stages import STAGE_KINDS

REGISTRIES = {"method": METHODS, "repair method": REPAIRS, "judge": JUDGES, "selector": SELECTORS, "task": TASKS,
              "stage kind": STAGE_KINDS, "preset": PRESETS}


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registry_is_one_registry_with_near_name_errors(kind):
    registry = REGISTRIES[kind]
    assert isinstance(registry, Registry) and registry.kind == kind and len(registry) >= 2
    first = registry.names()[0]
    typo = first[:-1] + ("x" if first[-1] != "x" else "y")
    with pytest.raises(ClinicError, match=rf"unknown {kind} '{typo}' \(did you mean '{first}'\?\)"):
        registry.get(typo)


@pytest.mark.parametrize("name", JUDGES.names())
def test_every_judge_honours_the_contract(name, tmp_path):
    cls = JUDGES[name]
    assert issubclass(cls, Judge) and cls.name == name
    assert 0 < cls.threshold < 1 and cls.degenerate_policy
    assert "_score" in vars(cls) or any("_score" in vars(base) for base in cls.__mro__[1:-2])
    if name in ("beaverdam", "llamaguard"):  # 7-8B weights: not here (tests/test_judges.py fakes them)
        return
    options = {"classifier": lambda: {"train_rows": _classifier_rows()},
               "harm-probe": lambda: {"weights_dir": _tiny_probe(tmp_path)},
               "harm-lora": lambda: {"weights_dir": _tiny_lora(tmp_path)}}
    judge = get_judge(name, **options.get(name, dict)())
    scores, flags = judge.score_and_flag(["how do I pick a lock?"] * 2, ["", "...."])
    assert scores == [0.0, 0.0] and flags == [False, False]  # degenerate answers: never flagged
    assert judge.describe()["name"] == name


def _tiny_probe(folder) -> str:
    """A probe on the tiny random model (the shipped one reads SmolLM2: tests/test_harm_probe.py)."""
    from clinic.evaluation.judges.harm_probe import save_probe

    save_probe(folder, [0.0] * 64, [1.0] * 64, [0.1] * 64, 0.0,
               {"features": {"model": "tiny-random-llama", "layers": [1], "blocks": ["mean"], "prompt_tokens": 16,
                             "answer_tokens": 16}})
    return str(folder)


def _tiny_lora(folder) -> str:
    """A LoRA classifier on the tiny random model, two steps (tests/test_harm_lora.py trains more)."""
    from clinic.evaluation.judges.harm_lora import train_harm_lora

    train_harm_lora(_classifier_rows(), folder, model_name="tiny-random-llama", max_steps=2, batch_size=4,
                    prompt_tokens=8, answer_tokens=8)
    return str(folder)


def _classifier_rows():
    return ([{"prompt": f"q{i}", "response": f"harmful help number {i}", "is_safe": False} for i in range(6)]
            + [{"prompt": f"q{i}", "response": f"I cannot help with {i}", "is_safe": True} for i in range(6)])


@pytest.mark.parametrize("name", SELECTORS.names())
def test_every_selector_honours_the_contract(name):
    spec = SELECTORS[name]
    assert spec.name == name and spec.summary and isinstance(spec.needs_model, bool)
    assert list(inspect.signature(spec.fn).parameters) == ["ctx"]


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_honours_the_contract(name, data_dir):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name and task.max_new_tokens >= 1
    row = task.test_rows()[0]
    sample = task.sample(row)
    assert sample.instruction or sample.input
    if name in scored_tasks():
        assert task.is_correct(sample.output or str(row.get("label", "")), row) in (True, False)
    else:
        with pytest.raises(ClinicError):
            task.is_correct("x", row)


def test_scored_tasks_come_from_the_tasks_themselves():
    assert scored_tasks() == tuple(n for n in TASKS.names() if TASKS[n].scored) and "alpaca" not in scored_tasks()


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_is_a_valid_training_config(name):
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(PRESETS[name]) <= fields
    TrainConfig(**PRESETS[name])
