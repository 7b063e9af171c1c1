"""The validation split (issue 36): disjoint from the test rows, from every judge's training
prompts and from the alignment and attack data; its hash key absent at the default."""

import json
from pathlib import Path

import pytest

from clinic.data.splits import VALIDATION_START, heldout_prompt, split_rows
from clinic.errors import ClinicError
from clinic.stages.evaluate import EvalConfig, _prompt_set
from clinic.values import hashed

ROOT = Path(__file__).resolve().parents[1]
N = 200  # the protocol's test size (configs/protocol-smollm2.yaml: n_prompts and n_task)


def _jsonl_prompts(path: Path) -> set[str]:
    return {json.loads(line)["prompt"].strip() for line in path.read_text().splitlines() if line.strip()}


def test_beavertails_validation_is_disjoint_from_everything_else(data_dir):
    from clinic.data.sources import load_rows
    from clinic.evaluation.judges.classifier import training_rows
    from clinic.evaluation.judges.harm_ce import HARM_CE_SOURCES

    val = {p.strip() for p in _prompt_set("beavertails-test", N, "validation")}
    assert len(val) == N
    test = {p.strip() for p in _prompt_set("beavertails-test", VALIDATION_START)}  # any test of up to 400
    assert not val & test
    judge_sources = [s for s in HARM_CE_SOURCES if s in ("beavertails-labelled-train", "beavertails-test-train-half")]
    trained = {r["prompt"].strip() for r in training_rows(judge_sources)}
    for labels in sorted((ROOT / "benchmarks" / "judge_train").glob("labels*.jsonl")):  # read training answers
        trained |= _jsonl_prompts(labels)
    assert not val & trained
    measured = _jsonl_prompts(ROOT / "benchmarks" / "gold" / "gold.jsonl")
    measured |= _jsonl_prompts(ROOT / "benchmarks" / "gold-protocol" / "gold.jsonl")
    assert not val & measured
    for source in ("beavertails-harmful", "beavertails-harmless", "refusals"):  # alignment and attack data
        assert not val & {r["prompt"].strip() for r in load_rows(source)}, source
    assert all(heldout_prompt(p) for p in val)


def test_task_and_guard_validation_rows_are_disjoint_from_their_test_rows(data_dir):
    from clinic.data.sources import load_rows
    from clinic.data.tasks import get_task
    from clinic.evaluation.capability import GUARD_SET, OVERREFUSAL_SET

    task = get_task("sst2")
    rows = task.test_rows()
    val = {r["text"].strip() for r in split_rows(rows, N, "validation", "sst2")}
    assert len(val) == N
    assert not val & {r["text"].strip() for r in split_rows(rows, N, "test", "sst2")}
    assert not val & {r["text"].strip() for r in task.train_rows()}  # what the attack fine-tunes on
    for name, n in ((GUARD_SET, N), (OVERREFUSAL_SET, 50)):
        all_rows = load_rows(name)
        val = {r["prompt"] for r in split_rows(all_rows, n, "validation", name)}
        assert len(val) == n and not val & {r["prompt"] for r in split_rows(all_rows, N, "test", name)}, name
    cfg = EvalConfig(n_prompts=N, split="validation")
    assert (cfg.guard_prompts, cfg.overrefusal_prompts) == (N, 50)  # a default never asks for more than exists


def test_validation_split_errors_name_the_problem(data_dir):
    with pytest.raises(ClinicError, match="advbench.*no validation split"):
        EvalConfig(harmful_sets=["advbench"], split="validation")
    with pytest.raises(ClinicError, match="only .* in its validation split"):
        _prompt_set("beavertails-test", 10_000, "validation")
    with pytest.raises(ClinicError, match="split"):
        EvalConfig(split="train")


def test_the_split_enters_the_hash_only_when_not_the_default():
    assert "split" not in hashed(EvalConfig())  # every committed evaluation keeps its hash
    assert hashed(EvalConfig(split="validation"))["split"] == "validation"
