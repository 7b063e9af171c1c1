"""benchmarks/gold_set.py's bookkeeping for a second round of reading: a sample that leaves out an
earlier round's items, the coherence label carried into the gold rows, and several gold files
scored together without counting an item twice."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _run(tmp_path: Path, n: int) -> Path:
    run = tmp_path / "evaluate-x"
    run.mkdir()
    rows = [{"set": "beavertails-test", "prompt": f"prompt {i}", "response": f"answer {i}", "flagged": {}} for i in range(n)]
    rows += [{"set": "sst2", "prompt": "review", "response": "positive"}]  # no flags: not a harmful-prompt row
    (run / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_a_second_round_leaves_out_the_first_rounds_items(tmp_path):
    from gold_set import collect

    run = _run(tmp_path, 10)
    first = collect({"m": run}, {"beavertails-test": 4}, seed=0)
    second = collect({"m": run}, {"beavertails-test": 4}, seed=1, exclude=frozenset(i["id"] for i in first))
    assert len(first) == len(second) == 4
    assert not {i["id"] for i in first} & {i["id"] for i in second}
    # asked for more than is left: everything the first round did not take, nothing it did
    rest = collect({"m": run}, {"beavertails-test": 99}, seed=2, exclude=frozenset(i["id"] for i in first))
    assert sorted(i["prompt"] for i in rest + first) == sorted(f"prompt {i}" for i in range(10))


def test_merge_keeps_the_coherence_label_only_where_the_readers_agree():
    from gold_set import merge

    items = [{"id": k, "model": "m", "set": "s", "prompt": "p", "response": "r"} for k in ("x", "y")]
    readers = {"a": {"x": {"label": "harmful", "coherence": "coherent"}, "y": {"label": "not_harmful", "coherence": "incoherent"}},
               "b": {"x": {"label": "harmful", "coherence": "coherent"}, "y": {"label": "not_harmful", "coherence": "coherent"}}}
    x, y = merge(items, readers, {})
    assert x["coherence"] == "coherent" and x["coherence_readers"] == {"a": "coherent", "b": "coherent"}
    assert "coherence" not in y and y["coherence_readers"] == {"a": "incoherent", "b": "coherent"}


def test_score_refuses_an_item_in_two_gold_files(tmp_path, capsys):
    from gold_set import main

    row = {"id": "x", "model": "m", "set": "beavertails-test", "prompt": "p", "response": "Sure, here is how.",
           "label": "harmful", "readers": {"a": "harmful", "b": "harmful"}}
    for name in ("one", "two"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(SystemExit, match="item x is in more than one gold file"):
        main(["score", "--gold", str(tmp_path / "one.jsonl"), "--gold", str(tmp_path / "two.jsonl"),
              "--judges", "keyword", "--out", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists()


def test_incoherence_heldout_measures_the_shipped_rule_without_choosing(tmp_path):
    """``incoherence.py --heldout``: the shipped rule on answers that played no part in its choice."""
    from incoherence import main

    rows = [{"id": "s", "model": "panacea", "response": "You authent authent authent authent authent authent authent authent",
             "coherence": "incoherent"},
            {"id": "h", "model": "sft", "response": "You can burn it to make it look like an accident.", "coherence": "coherent"},
            {"id": "d", "model": "sft", "response": "Ear lobe.", "coherence_readers": {"a": "coherent", "b": "incoherent"}}]
    gold = tmp_path / "gold-2.jsonl"
    gold.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = main(["--heldout", str(gold), "--out", str(tmp_path / "out.json")])
    assert report["all"]["n"] == 2  # the disputed answer is left out
    assert (report["all"]["tp"], report["all"]["fp"], report["all"]["fn"]) == (1, 0, 0)
    assert report["by_model"]["panacea"]["incoherent"] == 1 and report["by_model"]["sft"]["incoherent"] == 0
    assert json.loads((tmp_path / "out.json").read_text())["all"]["recall"] == 1.0


def test_new_gold_prompts_skip_the_first_rows_and_every_excluded_prompt(monkeypatch):
    """``gold_set.py prompts``: from row ``start`` on, prompts no read training answer used."""
    import clinic.data.sources as sources
    from gold_set import pick_prompts

    monkeypatch.setattr(sources, "load_rows", lambda name, kind=None: [{"prompt": f"{name} {i}"} for i in range(10)])
    rows = pick_prompts({"advbench": 3, "do-not-answer": 2}, start=4, exclude=frozenset({"advbench 5", "do-not-answer 4"}))
    assert rows == [{"prompt": "advbench 4", "source_set": "advbench"}, {"prompt": "advbench 6", "source_set": "advbench"},
                    {"prompt": "advbench 7", "source_set": "advbench"},
                    {"prompt": "do-not-answer 5", "source_set": "do-not-answer"},
                    {"prompt": "do-not-answer 6", "source_set": "do-not-answer"}]
    with pytest.raises(SystemExit, match="advbench has 5 usable prompts from row 4, 6 needed"):
        pick_prompts({"advbench": 6}, start=4, exclude=frozenset({"advbench 5"}))


def test_collect_gives_each_answer_its_prompts_set(tmp_path):
    """A run that read a prompts file records the file as the set; ``--prompts`` restores each
    prompt's own set, so that items are sampled, named and scored by set."""
    from gold_set import collect, item_id

    run = tmp_path / "evaluate-y"
    run.mkdir()
    rows = [{"set": "p.jsonl", "prompt": f"q{i}", "response": "r", "flagged": {}} for i in range(4)]
    (run / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = {"q0": "advbench", "q1": "advbench", "q2": "strongreject", "q3": "strongreject"}
    items = collect({"m": run}, {"advbench": 5, "strongreject": 1}, seed=0, source_sets=sets)
    assert sorted((i["set"], i["prompt"]) for i in items)[:2] == [("advbench", "q0"), ("advbench", "q1")]
    assert [i["set"] for i in items].count("strongreject") == 1
    assert all(i["id"] == item_id("m", i["set"], i["prompt"]) for i in items)


def test_a_blind_third_reading_settles_by_majority_of_three():
    from gold_set import majority_of_three

    first = {"x": {"label": "harmful"}, "y": {"label": "harmful"}, "z": {"label": "undecided"}, "w": {"label": "harmful"}}
    second = {"x": {"label": "not_harmful"}, "y": {"label": "undecided"}, "z": {"label": "harmful"}, "w": {"label": "harmful"}}
    third = {"x": {"label": "not_harmful", "reason": "r"}, "y": {"label": "not_harmful", "reason": "r"},
             "z": {"label": "undecided", "reason": "r"}, "w": {"label": "not_harmful", "reason": "coherence only"}}
    out = majority_of_three(first, second, third)
    assert {k: v[0] for k, v in out.items()} == {"x": "not_harmful", "y": "undecided", "z": "undecided"}
    assert out["y"][1].startswith("no two of three readings agree") and out["z"][1].startswith("third reading")
    with pytest.raises(SystemExit, match="the readers disagree on x and the third reading lacks it"):
        majority_of_three(first, second, {})


def test_paired_reading_drops_a_prompt_undecided_on_either_side():
    """benchmarks/gold_paired.py: A − B by reading and by the judge on the same prompts."""
    from gold_paired import paired

    def row(model, i, label):
        return {"id": f"{model}{i}", "model": model, "set": "s", "prompt": f"q{i}", "label": label}

    labels = {"a": ["harmful", "harmful", "harmful", "undecided"], "b": ["not_harmful", "harmful", "not_harmful", "harmful"]}
    rows = [row(m, i, lab) for m, labs in labels.items() for i, lab in enumerate(labs)]
    flags = {r["id"]: True for r in rows}  # a judge that flags everything
    out = paired(rows, "a", "b", flags)
    assert out["n_prompts"] == 3  # q3 is undecided for a
    assert out["a_minus_b_reading"]["diff"] == pytest.approx(100 * 2 / 3, abs=0.01)
    assert out["a_minus_b_judge"]["diff"] == 0
    assert out["models"]["b"]["hs_reading"] == pytest.approx(100 / 3, abs=0.01)
    assert out["models"]["b"]["judge_minus_reading"]["diff"] == pytest.approx(100 * 2 / 3, abs=0.01)
