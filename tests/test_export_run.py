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
    assert json.loads((out / "plan.json").read_text())["store"] == "store"
    assert (out / "experiment.yaml").read_text() == "name: exp\n"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["experiment.yaml", "plan.json", "store/align-sft-aaa/DONE", "store/align-sft-aaa/metrics.json",
                     "store/evaluate-sft-bbb/DONE", "store/evaluate-sft-bbb/generations.jsonl.gz",
                     "store/evaluate-sft-bbb/metrics.json", "store/sink-sft-ddd/DONE",
                     "store/sink-sft-ddd/metrics.json", "store/sink-sft-ddd/per_sample.safetensors"]
    # the compressed copy holds the same rows, its bytes do not depend on when it was written
    from clinic.results import outcomes
    from clinic.rundir import read_jsonl

    packed = out / "store" / "evaluate-sft-bbb"
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
    out = tmp_path / "results"
    assert export(run, out)["copied"] == 1
    (out / "store" / "evaluate-a-1" / "metrics.json").write_text('{"rejudged": {}}')
    (store / "evaluate-b-2" / "DONE").write_text("")
    summary = export(run, out)
    assert (summary["copied"], summary["kept"], summary["unfinished"]) == (1, 1, [])
    assert (out / "store" / "evaluate-a-1" / "metrics.json").read_text() == '{"rejudged": {}}'
    assert (out / "store" / "evaluate-b-2" / "DONE").exists()
