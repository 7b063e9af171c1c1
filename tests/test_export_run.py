"""benchmarks/export_run.py: finished stages copied without weights, plan pointed at the copy."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from export_run import export  # noqa: E402


ROWS = [{"set": "advbench", "prompt": "p", "response": "r\u00e9", "flagged": {"keyword": True}},
        {"set": "sst2", "prompt": "q", "response": "positive", "correct": True}]


def test_export_copies_small_outputs_of_finished_stages_only(tmp_path, monkeypatch):
    run, store = tmp_path / "runs" / "exp", tmp_path / "runs" / "store"
    for name, done in (("align-sft-aaa", True), ("evaluate-sft-bbb", True), ("finetune-sft-ccc", False),
                       ("sink-sft-ddd", True)):
        stage = store / name
        (stage / "adapter").mkdir(parents=True)
        (stage / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 100)
        (stage / "model.safetensors").write_bytes(b"w")
        (stage / "metrics.json").write_text("{}")
        if done:
            (stage / "DONE").write_text("")
        if name.startswith("sink"):
            (stage / "per_sample.safetensors").write_bytes(b"s")  # the bootstrap's input: kept
            (stage / "heatmap.png").write_bytes(b"png")  # a figure of sink.json's data: left out
        if name.startswith("evaluate"):
            (stage / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    run.mkdir(parents=True)
    (run / "experiment.yaml").write_text("name: exp\n")
    plan = {"name": "exp", "store": "../store", "stages": [{"dir": d} for d in ("align-sft-aaa", "evaluate-sft-bbb",
                                                                                "finetune-sft-ccc", "sink-sft-ddd")]}
    (run / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / "results" / "exp"
    summary = export(run, out)
    assert summary["copied"] == 3 and summary["unfinished"] == ["finetune-sft-ccc"]
    assert json.loads((out / "plan.json").read_text())["store"] == "../store"  # the results tree's shared store
    assert (out / "experiment.yaml").read_text() == "name: exp\n"
    files = sorted(str(p.relative_to(out.parent)) for p in out.parent.rglob("*") if p.is_file())
    assert files == ["exp/experiment.yaml", "exp/plan.json", "store/align-sft-aaa/DONE", "store/align-sft-aaa/metrics.json",
                     "store/evaluate-sft-bbb/DONE", "store/evaluate-sft-bbb/generations.jsonl.gz",
                     "store/evaluate-sft-bbb/metrics.json", "store/sink-sft-ddd/DONE",
                     "store/sink-sft-ddd/metrics.json", "store/sink-sft-ddd/per_sample.safetensors"]
    # the compressed copy holds the same rows, its bytes do not depend on when it was written
    from clinic.report.results import outcomes
    from clinic.rundir import read_jsonl

    packed = out.parent / "store" / "evaluate-sft-bbb"
    assert read_jsonl(packed / "generations.jsonl.gz") == ROWS
    first = (packed / "generations.jsonl.gz").read_bytes()
    monkeypatch.setattr(gzip.time, "time", lambda: 2e9)  # a later export: gzip would stamp its time
    shutil.rmtree(packed)  # (a copied stage is kept, so remove it to have it written again)
    export(run, out)
    assert (packed / "generations.jsonl.gz").read_bytes() == first
    assert outcomes(packed) == outcomes(store / "evaluate-sft-bbb") != {}


def test_a_second_export_adds_new_stages_and_keeps_the_copied_ones(tmp_path):
    """A copied stage keeps what was added to it (rejudge's verdicts); a stage finished since is added."""
    store, run = tmp_path / "store", tmp_path / "exp"
    for name in ("evaluate-a-1", "evaluate-b-2"):
        (store / name).mkdir(parents=True)
        (store / name / "metrics.json").write_text("{}")
    (store / "evaluate-a-1" / "DONE").write_text("")
    run.mkdir()
    (run / "plan.json").write_text(json.dumps({"store": "../store", "stages": [{"dir": "evaluate-a-1"},
                                                                              {"dir": "evaluate-b-2"}]}))
    out = tmp_path / "results" / "exp"
    assert export(run, out)["copied"] == 1
    shared = tmp_path / "results" / "store"
    (shared / "evaluate-a-1" / "metrics.json").write_text('{"rejudged": {}}')
    (store / "evaluate-b-2" / "DONE").write_text("")
    summary = export(run, out)
    assert (summary["copied"], summary["kept"], summary["unfinished"]) == (1, 1, [])
    assert (shared / "evaluate-a-1" / "metrics.json").read_text() == '{"rejudged": {}}'
    assert (shared / "evaluate-b-2" / "DONE").exists()


def test_an_experiment_file_is_exported_from_its_plan_over_a_store(tmp_path):
    """No run directory: the plan is made from the experiment file, so the stages finished in the store
    by any runner are exported under the plan's own names; the others are listed as unfinished."""
    import yaml
    from export_run import export_experiment

    from clinic.experiment import Experiment

    spec = {"name": "tiny", "model": "tiny-random-llama", "seeds": [0, 1],
            "align": {"methods": ["sft"], "n": 8},
            "evaluate": {"n_prompts": 4, "judges": ["keyword"], "n_task": 0, "max_new_tokens": 4, "base": False}}
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(yaml.safe_dump(spec))
    stages = Experiment.from_file(experiment).plan()
    names = [s.dirname for s in stages]
    assert len(names) == 4 and len(set(names)) == 4  # align + evaluate, two seeds
    store = tmp_path / "store"
    for name in names[:3]:  # seed 1's evaluation is not finished
        (store / name).mkdir(parents=True)
        (store / name / "metrics.json").write_text("{}")
        (store / name / "DONE").write_text("")
    out = tmp_path / "results" / "tiny"
    summary = export_experiment(experiment, store, out)
    assert (summary["copied"], summary["unfinished"]) == (3, [names[3]])
    plan = json.loads((out / "plan.json").read_text())
    assert plan["store"] == "../store" and [s["dir"] for s in plan["stages"]] == names
    assert (out / "experiment.yaml").read_text() == experiment.read_text()
    assert sorted(p.name for p in (out.parent / "store").iterdir()) == sorted(names[:3])


def test_export_needs_a_run_directory_or_an_experiment(tmp_path, capsys):
    import pytest
    from export_run import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "out")])
    assert exc.value.code == 2 and "either a run directory or --experiment" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--experiment", str(tmp_path / "x.yaml"), str(tmp_path / "out")])
    assert exc.value.code == 2 and "--experiment needs --store" in capsys.readouterr().err


def test_stages_spread_over_several_stores_are_looked_up_in_order(tmp_path, capsys):
    """Seeds run here, seed 0 already in an earlier results folder: each stage comes from the first
    store that finished it (a results copy keeps its compressed generations and rejudged verdicts)."""
    import pytest
    from export_run import main

    here, earlier, later = tmp_path / "runs" / "store", tmp_path / "results" / "old" / "store", tmp_path / "third"
    for store, name, text in ((here, "evaluate-a-1", "here"), (earlier, "evaluate-a-1", "earlier"),
                              (earlier, "evaluate-b-2", "earlier"), (later, "evaluate-b-2", "later"),
                              (later, "evaluate-c-3", "later")):
        (store / name).mkdir(parents=True)
        (store / name / "metrics.json").write_text(text)
        (store / name / "DONE").write_text("")
    (here / "evaluate-c-3").mkdir()  # unfinished here, finished in the third store
    run = tmp_path / "exp"
    run.mkdir()
    (run / "plan.json").write_text(json.dumps({"store": str(here), "stages": [
        {"dir": "evaluate-a-1"}, {"dir": "evaluate-b-2"}, {"dir": "evaluate-c-3"}, {"dir": "evaluate-d-4"}]}))
    out = tmp_path / "results" / "new"
    main([str(run), str(out), "--store", str(earlier), "--store", str(later)])
    assert "3 stages copied" in capsys.readouterr().out
    shared = out.parent / "store"
    assert [(shared / n / "metrics.json").read_text() for n in ("evaluate-a-1", "evaluate-b-2", "evaluate-c-3")] \
        == ["here", "earlier", "later"]
    assert not (shared / "evaluate-d-4").exists()
    with pytest.raises(SystemExit) as exc:
        main([str(run), str(tmp_path / "elsewhere" / "out2"), "--store", str(tmp_path / "nope")])
    assert exc.value.code == 2 and "is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def _finished(store, name, text="{}"):
    (store / name).mkdir(parents=True)
    (store / name / "metrics.json").write_text(text)
    (store / name / "DONE").write_text("")


def test_folders_of_one_results_tree_share_one_copy_of_a_common_stage(tmp_path):
    """Two experiments sharing a stage (the SFT baseline): it is copied once into results/store, both
    plans read it there, and a stage only the shared store holds is found (kept, not unfinished)."""
    from clinic.rundir import load_plan

    store = tmp_path / "runs" / "store"
    _finished(store, "evaluate-base-1", "base")
    _finished(store, "evaluate-a-2", "a")
    for name, stages in (("one", ["evaluate-base-1", "evaluate-a-2"]), ("two", ["evaluate-base-1", "evaluate-b-3"])):
        run = tmp_path / "runs" / name
        run.mkdir()
        (run / "plan.json").write_text(json.dumps({"store": "../store", "stages": [{"dir": d} for d in stages]}))
    results = tmp_path / "results"
    assert export(tmp_path / "runs" / "one", results / "one")["copied"] == 2
    shutil.rmtree(store / "evaluate-base-1")  # a new machine: only the results tree has it now
    _finished(store, "evaluate-b-3", "b")
    summary = export(tmp_path / "runs" / "two", results / "two")
    assert (summary["copied"], summary["kept"], summary["unfinished"]) == (1, 1, [])
    assert sorted(p.name for p in (results / "store").iterdir()) == ["evaluate-a-2", "evaluate-b-3", "evaluate-base-1"]
    for name in ("one", "two"):
        plan, shared = load_plan(results / name)
        assert shared == (results / "store").resolve()
        assert (shared / "evaluate-base-1" / "metrics.json").read_text() == "base"
    assert sorted(p.name for p in (results / "two").iterdir()) == ["plan.json"]


def test_an_export_into_the_runners_own_store_is_refused(tmp_path, capsys):
    """Exporting runs/exp into runs/out would make runs/store (the runner's, with weights) the shared
    store: refused with one line, nothing written."""
    import pytest
    from export_run import main

    store = tmp_path / "runs" / "store"
    _finished(store, "evaluate-a-1")
    run = tmp_path / "runs" / "exp"
    run.mkdir()
    (run / "plan.json").write_text(json.dumps({"store": "../store", "stages": [{"dir": "evaluate-a-1"}]}))
    with pytest.raises(SystemExit) as exc:
        main([str(run), str(tmp_path / "runs" / "out")])
    assert exc.value.code == 2 and "is the store the experiment ran in" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "out").exists()
    # naming the results tree's store among the sources is harmless: it is looked in anyway
    (tmp_path / "results" / "store").mkdir(parents=True)
    main([str(run), str(tmp_path / "results" / "exp"), "--store", str(tmp_path / "results" / "store")])
    assert "1 stages copied" in capsys.readouterr().out
    assert (tmp_path / "results" / "store" / "evaluate-a-1" / "DONE").exists()


def test_the_command_writes_the_folders_report(tmp_path, data_dir):
    """`export_run.py` leaves the folder's results.md as its report now: a results folder exported
    again (a stage finished since) is never left with a stale one."""
    from _results import fake_experiment
    from test_choice import FAKE, _search_experiment, _write_evaluation

    from export_run import main

    from clinic.report.tables import results_markdown

    run = fake_experiment(tmp_path / "run", _search_experiment(),
                          lambda stage, folder: _write_evaluation(folder, *FAKE[stage.labels["align"]][stage.labels["p"]]))
    out = tmp_path / "results" / "search"
    main([str(run), str(out)])
    assert (out / "results.md").read_text() == results_markdown(out) and "vac-r1" in (out / "results.md").read_text()
