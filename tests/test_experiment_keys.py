"""The experiment file's blocks that hold a settings dataclass (train, evaluate, sink, repair)
accept exactly that dataclass's fields: the same schema as the command's options, so a new
setting is an experiment key the moment it is a field (issue 14, part 1)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from clinic.errors import ClinicError
from clinic.experiment import Experiment
from clinic.experiment.spec import block_keys


def tiny(**changes) -> dict:
    exp = {"model": "tiny-random-llama", "align": {"methods": ["sft"], "n": 8},
           "finetune": {"methods": ["sft"], "tasks": ["sst2"], "n": 8, "poison_ratios": [0.1]},
           "evaluate": {"n_prompts": 4, "judges": ["keyword"]}}
    return {**exp, **changes}


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def test_the_keys_are_the_fields_of_the_commands_dataclasses():
    from clinic.modeling.training import TrainConfig
    from clinic.stages.evaluate import EvalConfig
    from clinic.repair import RepairConfig
    from clinic.sink.config import SinkConfig

    keys = block_keys()
    assert keys["train"] == _fields(TrainConfig)
    assert keys["evaluate"] == _fields(EvalConfig) | {"base", "aligned"}
    assert keys["sink"] == _fields(SinkConfig) | {"aligned"}
    assert keys["repair"] == _fields(RepairConfig) - {"seed"} | {"methods"}  # the seed is the file's


def test_every_sink_setting_is_a_key_and_reaches_the_stage(data_dir):
    """harmful_source/harmless_source were `clinic sink` options that the hand-kept key list refused."""
    exp = Experiment.from_dict(tiny(sink={"n": 2, "harmful_source": "beavertails-harmful",
                                          "harmless_source": "refusals", "batch_size": "4"}))
    (sink,) = [s for s in exp.plan() if s.kind == "sink"]
    assert sink.config == {"n": 2, "harmful_source": "beavertails-harmful", "harmless_source": "refusals",
                           "batch_size": 4}  # typed as the field is declared; absent settings stay out of the hash


def test_the_sink_stage_hash_holds_only_the_settings_given(data_dir):
    """A sink block as old files wrote it: its stage config (so its hash) is what it was."""
    exp = Experiment.from_dict(tiny(sink={"n": 2, "max_length": 64}))
    (sink,) = [s for s in exp.plan() if s.kind == "sink"]
    assert sink.config == {"n": 2, "max_length": 64}


@dataclasses.dataclass
class _NewSink:
    n: int = 100
    new_setting: int = 1

    def __post_init__(self):  # as every settings dataclass: the one validator types it
        from clinic.values import check_fields

        check_fields(self)


def test_a_new_field_is_a_key_at_once(data_dir, monkeypatch):
    import clinic.sink.config

    with pytest.raises(ClinicError, match="unknown key 'new_setting' in sink"):
        Experiment.from_dict(tiny(sink={"new_setting": 3}))
    monkeypatch.setattr(clinic.sink.config, "SinkConfig", _NewSink)
    exp = Experiment.from_dict(tiny(sink={"new_setting": "3"}))
    (sink,) = [s for s in exp.plan() if s.kind == "sink"]
    assert sink.config == {"n": 100, "new_setting": 3}


@pytest.mark.parametrize(("block", "where"), [("align", "align"), ("finetune", "finetune block 1")])
def test_train_keys_are_train_config_fields_with_a_suggestion(data_dir, block, where):
    raw = tiny()
    raw[block] = {**raw[block], "train": {"epochz": 2}}
    with pytest.raises(ClinicError, match=rf"^unknown key 'epochz' in train in {where} \(did you mean 'epochs'\?\)$"):
        Experiment.from_dict(raw)


def test_every_repair_setting_but_the_seed_is_a_key(data_dir):
    exp = Experiment.from_dict(tiny(repair={"methods": ["safelora"], "batch_size": 2, "max_length": 32}))
    (repair,) = [s for s in exp.plan() if s.kind == "repair"]
    assert repair.config["settings"] == {"seed": 0, "batch_size": 2, "max_length": 32}
    with pytest.raises(ClinicError, match="unknown key 'seed' in repair"):
        Experiment.from_dict(tiny(repair={"methods": ["safelora"], "seed": 1}))


def test_curate_align_finetune_keys_are_their_block_dataclasses_fields():
    from clinic.experiment.blocks import AlignBlock, CurateBlock, FinetuneBlock
    from clinic.experiment.spec import ALIGN_KEYS, CURATE_KEYS, FINETUNE_KEYS

    assert CURATE_KEYS == _fields(CurateBlock)
    assert ALIGN_KEYS == _fields(AlignBlock)
    assert FINETUNE_KEYS == _fields(FinetuneBlock)


def test_the_plan_takes_block_defaults_from_the_block_dataclasses(data_dir, monkeypatch):
    """An absent finetune key gets the dataclass default: change the default, the stage changes."""
    import clinic.experiment.blocks as blocks

    raw = tiny(finetune={"methods": ["sft"], "n": 8})  # no tasks, poison_ratios, harmful_source
    (ft,) = [s for s in Experiment.from_dict(raw).plan() if s.kind == "finetune"]
    assert ft.config["data"]["task"] == "sst2" and ft.config["data"]["poison_ratio"] == 0.1
    monkeypatch.setattr(blocks.FinetuneBlock.__dataclass_fields__["poison_ratios"], "default", (0.2,))
    (ft,) = [s for s in Experiment.from_dict(raw).plan() if s.kind == "finetune"]
    assert ft.config["data"]["poison_ratio"] == 0.2


def test_the_block_key_table_in_the_docs_is_current():
    from pathlib import Path

    from clinic.experiment.blocks import keys_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text(encoding="utf-8")
    table = page.split("<!-- block-keys -->\n", 1)[1].split("\n<!-- /block-keys -->", 1)[0]
    assert table == keys_markdown(), "regenerate the table in docs/experiments.md from clinic.experiment.blocks.keys_markdown()"


def test_the_execution_block_is_known_checked_and_never_hashed(data_dir, tmp_path):
    """device, dtype, executor, store and resources are execution settings: the validator knows
    them (a typo or a bad value is a one-line error), the plan's hashes ignore them, and a resume
    accepts a file whose only change is there."""
    from clinic.experiment import run_experiment

    raw = tiny()
    plain = [s.dirname for s in Experiment.from_dict(raw).plan()]
    run_on = {**raw, "execution": {"device": "cpu", "dtype": "bfloat16", "executor": "local",
                                   "store": str(tmp_path / "store")}}
    assert [s.dirname for s in Experiment.from_dict(run_on).plan()] == plain
    with pytest.raises(ClinicError, match=r"unknown key 'devise' in execution \(did you mean 'device'\?\)"):
        Experiment.from_dict({**raw, "execution": {"devise": "cpu"}})
    with pytest.raises(ClinicError, match="unknown executor 'slurm'"):
        Experiment.from_dict({**raw, "execution": {"executor": "slurm"}})
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump(raw))
    second.write_text(yaml.safe_dump(run_on))
    root = run_experiment(first, tmp_path / "run", dry_run=True)
    (root / "experiment.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "experiment.yaml").write_text(first.read_text())
    run_experiment(second, tmp_path / "run", dry_run=True)  # not "a different experiment"
    other = {**raw, "seeds": [1]}
    second.write_text(yaml.safe_dump(other))
    with pytest.raises(ClinicError, match="holds a different experiment"):
        run_experiment(second, tmp_path / "run", dry_run=True)


def test_a_renamed_setting_keeps_its_old_key_and_its_hash(data_dir):
    """harmful_data became harmful_source (one name per concept, as in the fine-tuning data): an
    experiment file may still say harmful_data, and the stage hashes are the ones published
    (the plan hashes the field under its old name)."""
    raw = tiny(align={"methods": [{"name": "booster", "harmful_size": 8}], "n": 8})
    new = tiny(align={"methods": [{"name": "booster", "harmful_size": 8, "harmful_source": "beavertails-harmful"}],
                      "n": 8})
    old = tiny(align={"methods": [{"name": "booster", "harmful_size": 8, "harmful_data": "beavertails-harmful"}],
                      "n": 8})
    plans = [[s.dirname for s in Experiment.from_dict(r).plan()] for r in (raw, new, old)]
    assert plans[0] == plans[1] == plans[2]
    align = next(s for s in Experiment.from_dict(new).plan() if s.kind == "align")
    assert align.config["options"]["harmful_data"] == "beavertails-harmful" and "harmful_source" not in align.config["options"]


@pytest.mark.parametrize("block", ["align", "finetune"])
def test_a_method_entry_trains_with_its_own_overrides_and_nothing_else_moves(data_dir, block):
    """Issue 36: a search trial may train longer (``train:`` in one method entry, over the block's);
    the other entries' stages keep their hashes."""
    def plan(methods):
        raw = tiny()
        raw[block] = {**raw[block], "methods": methods, "train": {"lr": 1e-4}}
        return {s.labels["slug"]: s for s in Experiment.from_dict(raw).plan() if s.kind == block}

    before = plan(["sft"])
    after = plan(["sft", {"name": "sft", "label": "sft-long", "train": {"epochs": 4}}])
    (plain,) = [s for slug, s in before.items()]
    assert after[plain.labels["slug"]].hash == plain.hash
    (long,) = [s for s in after.values() if "sft-long" in s.labels["slug"]]
    assert long.config["train"]["epochs"] == 4 and long.config["train"]["lr"] == 1e-4
    assert {k: v for k, v in long.config["train"].items() if k != "epochs"} == \
        {k: v for k, v in plain.config["train"].items() if k != "epochs"}


@pytest.mark.parametrize(("train", "message"), [({"epochz": 4}, "epochz"), ([4], "must map training settings")])
def test_a_bad_entry_train_is_a_one_line_error(data_dir, train, message):
    raw = tiny()
    raw["align"] = {**raw["align"], "methods": [{"name": "sft", "label": "x", "train": train}]}
    with pytest.raises(ClinicError, match=message):
        Experiment.from_dict(raw).plan()


def test_the_experiment_file_example_in_the_docs_plans(data_dir):
    """docs/experiments.md's annotated example is a file `clinic run` accepts (it once named a
    T-Vaccine option that does not exist)."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", page[page.index("## The experiment file"):], re.S).group(1)
    assert Experiment.from_dict(yaml.safe_load(example)).plan()


def test_a_finetune_block_can_stay_unrepaired(data_dir):
    """``repaired: false``: the repair block skips that block's fine-tunes (a search's benign
    reference needs no repair); other blocks' repairs keep their hashes."""
    def plan(second: dict):
        raw = tiny(repair={"methods": ["antidote"]})
        raw["finetune"] = [raw["finetune"], {**raw["finetune"], "poison_ratios": [0], **second}]
        return [s for s in Experiment.from_dict(raw).plan() if s.kind == "repair"]

    both, first_only = plan({}), plan({"repaired": False})
    assert [s.labels["p"] for s in both] == [0.1, 0.0] and [s.labels["p"] for s in first_only] == [0.1]
    assert first_only[0].hash == both[0].hash
