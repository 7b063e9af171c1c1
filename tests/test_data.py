"""Data sources, column mapping, one-line errors, and BeaverTails overlap rules."""

from __future__ import annotations

import json

import pytest

from clinic.data.readers import parse_columns, read_harmbench, read_sorrybench
from clinic.data.sources import SOURCES, load_rows
from clinic.errors import ClinicError


def test_named_sources_resolve_from_data_dir(data_dir):
    counts = {name: len(load_rows(name)) for name in ["refusals", "sst2-validation", "gsm8k-test", "advbench",
                                                      "strongreject", "do-not-answer", "agnews-test", "alpaca"]}
    assert counts == {"refusals": 2483, "sst2-validation": 872, "gsm8k-test": 1319, "advbench": 520,
                      "strongreject": 313, "do-not-answer": 939, "agnews-test": 7600, "alpaca": 1000}
    row = load_rows("sst2-validation")[0]
    assert set(row) >= {"text", "label"} and row["label"] in (0, 1)


def test_beavertails_eval_prompts_never_in_training_sources(data_dir):
    eval_prompts = {r["prompt"] for r in load_rows("beavertails-test")}
    harmful = load_rows("beavertails-harmful")
    harmless = load_rows("beavertails-harmless")
    raw_eval = [json.loads(line)["prompt"] for line in open(data_dir / "beavertails_30k_test/eval_prompts.jsonl")]
    assert 0 < len(eval_prompts) < len(raw_eval)  # some overlapping prompts were dropped
    assert not eval_prompts & {r["prompt"] for r in harmful}
    assert not eval_prompts & {r["prompt"] for r in harmless}
    assert all(r["response"] for r in harmful[:50])


def test_user_file_with_column_mapping(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("question,answer\nhow?,like this\nwhy?,because\n")
    rows = load_rows(str(path), kind="qa", columns=parse_columns("prompt=question,response=answer"))
    assert [(r["prompt"], r["response"]) for r in rows] == [("how?", "like this"), ("why?", "because")]


@pytest.mark.parametrize(
    "name,content,kind,columns,message",
    [
        ("a.jsonl", '{"prompt": "x", "response": "y"}\n{"prompt": "x2"}\n', "qa", None, "row 2: missing column 'response'"),
        ("b.jsonl", '{"prompt": "x", "response": "y"}\nnot json\n', "qa", None, "row 2: not valid JSON"),
        ("c.csv", "q,a\nx,y\n", "qa", "prompt=q,response=answer", "row 1: missing column 'answer'"),
        ("d.json", "[]", "qa", None, "the dataset is empty"),
        ("e.txt", "hello", "qa", None, "unsupported file type"),
        ("f.jsonl", '{"text": "x", "label": "pos"}\n', "classification", None, "label 'pos' is not an integer"),
    ],
)
def test_bad_files_give_one_line_errors_naming_file_row_column(tmp_path, name, content, kind, columns, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ClinicError) as err:
        load_rows(str(path), kind=kind, columns=parse_columns(columns))
    text = str(err.value)
    assert message in text and name in text and "\n" not in text


def test_unknown_dataset_and_missing_file():
    with pytest.raises(ClinicError, match="unknown dataset 'nope'"):
        load_rows("nope", kind="qa")


def test_missing_named_dataset_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("CLINIC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from clinic.data import sources

    sources._load_named.cache_clear()
    try:
        with pytest.raises(ClinicError, match="dataset 'advbench' not found.*hub is offline"):
            load_rows("advbench")
    finally:
        sources._load_named.cache_clear()


def test_harmbench_reader_places_context_before_behavior(tmp_path):
    path = tmp_path / "harmbench_behaviors_text_all.csv"
    path.write_text(
        "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
        "Write a plan to do X,standard,illegal,,,plan_x\n"
        '"Explain how this code could be abused",contextual,cybercrime,context,"def f(): pass",code_abuse\n'
    )
    rows = read_harmbench(path)
    assert rows[0]["prompt"] == "Write a plan to do X"
    assert rows[1]["prompt"].startswith("def f(): pass") and rows[1]["prompt"].endswith("Explain how this code could be abused")
    assert rows[1]["behavior_id"] == "code_abuse"
    # the generic loader recognises the official format too
    assert load_rows(str(path), kind="prompts")[1]["prompt"] == rows[1]["prompt"]


def test_sorrybench_reader(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text(
        json.dumps({"question_id": 1, "category": "1", "turns": ["Write something hateful"], "prompt_style": "base"}) + "\n"
        + json.dumps({"question_id": 2, "category": "2", "turns": ["Another one"], "prompt_style": "slang"}) + "\n"
    )
    rows = read_sorrybench(path)
    assert [r["prompt"] for r in rows] == ["Write something hateful", "Another one"]
    assert rows[1]["prompt_style"] == "slang"
    assert load_rows(str(path), kind="prompts")[0]["question_id"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question_id": 1, "turns": "not a list"}) + "\n")
    with pytest.raises(ClinicError, match="row 1: column 'turns'"):
        read_sorrybench(bad)


def test_every_source_has_a_reader_and_kind():
    for source in SOURCES.values():
        assert source.reader is not None and source.kind and source.files


def test_a_sources_stated_size_is_the_files(data_dir):
    """A default count (the free-text guard's prompts, clinic.stages.evaluate) rests on a source's
    ``size``: it must be the number of rows the data directory's file holds."""
    sized = {name: source.size for name, source in SOURCES.items() if source.size is not None}
    assert {"alpaca-eval", "xstest-safe"} <= set(sized)
    for name, size in sized.items():
        assert len(load_rows(name)) == size, name
