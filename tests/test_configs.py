"""The experiment files shipped in configs/: each one plans (so `clinic run` accepts it), is
named after its file and tells how to run it; the curation files under T-Vaccine alignment share
their curated subsets with the SFT ones, so their comparison is on the same rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from clinic.experiment import Experiment

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(CONFIGS.glob("*.yaml"))


def _plan(path: Path):
    return Experiment.from_dict(yaml.safe_load(path.read_text())).plan()


def test_there_are_shipped_experiments():
    assert len(FILES) >= 10


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_a_shipped_experiment_plans_and_is_named_after_its_file(path):
    plan = _plan(path)
    assert plan and all(stage.hash for stage in plan)
    assert yaml.safe_load(path.read_text())["name"] == path.stem
    usage = re.findall(r"^#\s+clinic run (\S+)", path.read_text(), re.M)
    assert all(u == f"configs/{path.name}" for u in usage), f"{path.name}: its usage line names {usage}"


@pytest.mark.parametrize("selector", ["pharmacist", "random", "gradnorm"])
def test_the_tvaccine_curation_uses_the_sft_curations_subset(selector):
    """C5 under T-Vaccine alignment compares the same rows as under SFT alignment: the curate
    stage (its hash) is shared, and the T-Vaccine alignment is the protocol's (the settings of
    configs/protocol-align-defences-smollm2.yaml's T-Vaccine, but for its data and where the model is named)."""
    def stages(name, kind):
        return [s for s in _plan(CONFIGS / name) if s.kind == kind]

    (sft_curate,) = stages(f"protocol-curation-{selector}-smollm2.yaml", "curate")
    (tv_curate,) = stages(f"protocol-curation-{selector}-tvaccine-smollm2.yaml", "curate")
    assert tv_curate.hash == sft_curate.hash
    (tv_align,) = stages(f"protocol-curation-{selector}-tvaccine-smollm2.yaml", "align")
    full = next(s for s in stages("protocol-align-defences-smollm2.yaml", "align") if s.config["method"] == "tvaccine")
    assert tv_align.config["method"] == "tvaccine" and tv_align.parent.hash == tv_curate.hash
    # (the model is named by the curate stage a curated alignment starts from)
    assert all(tv_align.config[k] == full.config[k] for k in ("method", "options", "train"))


SEARCHES = {"search-tvaccine-smollm2.yaml": ("align", "tvaccine", "protocol-align-defences-smollm2.yaml"),
            "search-booster-smollm2.yaml": ("align", "booster", "protocol-align-defences-smollm2.yaml"),
            "search-panacea-smollm2.yaml": ("repair", "panacea", "protocol-repair-smollm2.yaml"),
            "search-vaccine-smollm2.yaml": ("align", "vaccine", "protocol-align-defences-smollm2.yaml"),
            "search-repnoise-smollm2.yaml": ("align", "repnoise", "protocol-align-defences-smollm2.yaml"),
            "search-lisa-smollm2.yaml": ("finetune", "lisa", "protocol-finetune-defences-smollm2.yaml"),
            "search-surgery-smollm2.yaml": ("finetune", "surgery", "protocol-finetune-defences-smollm2.yaml"),
            "search-safelora-smollm2.yaml": ("repair", "safelora", "protocol-repair-smollm2.yaml"),
            "search-antidote-smollm2.yaml": ("repair", "antidote", "protocol-repair-smollm2.yaml")}


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_a_defence_search_evaluates_on_the_validation_split_and_shares_the_protocols_training(name):
    """Issue 36: every evaluation of a search experiment is on the validation split, and its SFT
    reference and reference-default trial are the protocol's own stages (the store shares them)."""
    field, reference, protocol_file = SEARCHES[name]
    search = _plan(CONFIGS / name)
    evaluations = [s for s in search if s.kind == "evaluate"]
    assert evaluations and all(s.config["split"] == "validation" for s in evaluations)
    protocol = {s.hash for s in _plan(CONFIGS / protocol_file)} | {
        s.hash for s in _plan(CONFIGS / "protocol-align-defences-smollm2.yaml")}  # SFT's p = 0.1 attack
    def reference_stage(stage) -> bool:  # SFT's training, and the reference defaults' own stage
        if field == "align":
            return stage.labels["align"] in ("sft", reference)
        if field == "finetune":
            return stage.kind != "finetune" or stage.labels["finetune"] in ("sft", reference)
        return stage.kind != "repair" or stage.labels["repair"] == reference

    # (the protocol repaired only at p = 0 and 0.2)
    shared = [s for s in search if s.kind != "evaluate" and reference_stage(s)
              and not (s.kind == "repair" and s.labels["p"] == 0.1)]
    assert len(shared) >= 4 and all(s.hash in protocol for s in shared)
    trials = {s.labels[field] for s in search if s.kind == "evaluate" and s.labels.get(field) not in (None, "sft", "none")}
    assert reference in trials and len(trials) >= 4  # the reference defaults are a trial, the budget's others too
    # SFT's benign fine-tune on validation: the free-text guard's reference
    assert any(s.kind == "evaluate" and s.labels["p"] == 0 and s.labels.get(field) in ("sft", None) for s in search)


def test_pharmacists_search_trials_are_experiments_on_the_validation_split():
    """Pharmacist's trials are whole experiments (one curate block each): every evaluation on the
    validation split, the reference trial's curation, alignment and attacks the protocol's."""
    trials = sorted(CONFIGS.glob("search-pharmacist-*.yaml"))
    assert len(trials) == 6
    for path in trials:
        assert all(s.config["split"] == "validation" for s in _plan(path) if s.kind == "evaluate"), path.name
    protocol = {s.hash for s in _plan(CONFIGS / "protocol-curation-pharmacist-smollm2.yaml")}
    reference = [s for s in _plan(CONFIGS / "search-pharmacist-r0.4-g1-smollm2.yaml") if s.kind != "evaluate"]
    assert len(reference) == 4 and all(s.hash in protocol for s in reference)


def test_the_adaptive_attackers_validation_twin_shares_every_attack():
    """Issue 36, part 3: the attacker chooses its worst attack on the validation split. The twin
    of configs/adaptive-smollm2.yaml trains exactly its stages (the store shares them) and only
    evaluates on validation rows, so `clinic report --select-on` compares the same models."""
    test = _plan(CONFIGS / "adaptive-smollm2.yaml")
    twin = _plan(CONFIGS / "adaptive-validation-smollm2.yaml")
    trained = lambda plan: {s.hash for s in plan if s.kind != "evaluate"}  # noqa: E731
    assert trained(twin) == trained(test) and len(trained(test)) >= 34
    evaluations = [s for s in twin if s.kind == "evaluate"]
    assert len(evaluations) == 32 and all(s.config["split"] == "validation" for s in evaluations)
