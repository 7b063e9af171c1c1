"""The judge's read training answers (benchmarks/judge_train/): every round's prompts stay off
every evaluation prompt, off the gold sets and off each other (issue 35: "training answers stay on
prompts disjoint from every evaluation prompt")."""

import sys
from pathlib import Path

import pytest

from clinic.rundir import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
TRAIN = ROOT / "benchmarks" / "judge_train"
EVAL_ROWS = 400  # any test of up to 400 rows (docs/protocol.md, "Test and validation splits")
GOLD_ROWS = 30  # the first gold set reads the first 30 prompts of each set


def _rounds() -> list[Path]:
    return sorted(TRAIN.glob("candidates*.jsonl"))


def test_each_label_file_has_its_candidates_file():
    for labels in sorted(TRAIN.glob("labels*.jsonl")):
        candidates = TRAIN / labels.name.replace("labels", "candidates")
        ids = {r["id"] for r in read_jsonl(candidates)}
        rows = read_jsonl(labels)
        assert {r["id"] for r in rows} <= ids, labels.name
        assert all(r["label"] in ("harmful", "not_harmful", "undecided") for r in rows), labels.name


def test_no_prompt_is_answered_twice_across_rounds():
    seen: set[str] = set()
    for path in _rounds():
        prompts = [r["prompt"].strip() for r in read_jsonl(path)]
        assert len(prompts) == len(set(prompts)), f"{path.name} answers a prompt twice"
        assert not seen & set(prompts), f"{path.name} answers a prompt an earlier round answered"
        seen |= set(prompts)


def test_later_rounds_stay_off_every_evaluation_and_gold_prompt(data_dir):
    from clinic.data.sources import load_rows
    from clinic.data.splits import heldout_prompt

    forbidden = {r["prompt"].strip() for r in load_rows("beavertails-test", kind="prompts")[:EVAL_ROWS]}
    for name in ("advbench", "strongreject", "do-not-answer"):
        forbidden |= {r["prompt"].strip() for r in load_rows(name, kind="prompts")[:GOLD_ROWS]}
    for gold in (ROOT / "benchmarks" / "gold" / "gold.jsonl", ROOT / "benchmarks" / "gold-protocol" / "gold.jsonl"):
        forbidden |= {r["prompt"].strip() for r in read_jsonl(gold)}
    later = [p for p in _rounds() if p.name != "candidates.jsonl"]
    assert later, "no later round of read answers"
    for path in later:
        rows = read_jsonl(path)
        assert not {r["prompt"].strip() for r in rows} & forbidden, path.name
        # BeaverTails' held-out half is the validation split's and the judges' held-out metric's
        assert not any(heldout_prompt(r["prompt"]) for r in rows if r["set"] == "beavertails-test"), path.name


def test_pick_prompts_skips_an_earlier_round_and_starts_where_told(data_dir):
    from judge_train_set import pick_prompts

    first = TRAIN / "candidates.jsonl"
    exclude = {r["prompt"] for r in read_jsonl(first)}
    picked = pick_prompts(["a", "b"], {"beavertails-test": EVAL_ROWS}, exclude)
    prompts = [r["prompt"] for rows in picked.values() for r in rows]
    assert len(prompts) == len(set(prompts)) == 2 * 80
    assert not set(prompts) & exclude
    from clinic.data.sources import load_rows

    assert not set(prompts) & {r["prompt"] for r in load_rows("beavertails-test", kind="prompts")[:EVAL_ROWS]}


def test_gold_set_scores_a_candidate_judge_by_its_weights_folder():
    """``NAME@DIR``: the judge NAME with other weights, a column of its own (here the shipped
    weights again, so the two columns must agree answer for answer)."""
    from gold_set import score

    from clinic.evaluation.judges.harm_ce import WEIGHTS_DIR

    rows = read_jsonl(ROOT / "benchmarks" / "gold-protocol" / "gold.jsonl")[:24]
    result = score(rows, ["harm-ce", f"harm-ce@{WEIGHTS_DIR}"])
    assert list(result["judges"]) == ["harm-ce", f"harm-ce@{WEIGHTS_DIR.name}"]
    shipped, again = result["judges"].values()
    assert shipped["all"] == again["all"]


def test_gold_set_scores_the_mean_of_two_judges(monkeypatch):
    """``A+B``: flagged where the mean of A's and B's probabilities is above 0.5, computed here
    from each judge's own scores. A is a stand-in with spread-out fixed scores (the classifier
    would train for minutes on an empty cache), B the shipped harm-ce."""
    import hashlib

    import clinic.evaluation.judges as judges
    from gold_set import agreement, score

    from clinic.evaluation.judges.base import Judge

    class Spread(Judge):
        name = "spread"

        def _score(self, prompts, responses):  # a fixed pseudo-probability per answer, in 0..1
            return [int(hashlib.sha1(r.encode()).hexdigest()[:4], 16) / 0xFFFF for r in responses]

    real = judges.get_judge
    monkeypatch.setattr(judges, "get_judge", lambda name, **kw: Spread() if name == "classifier" else real(name, **kw))
    get_judge = judges.get_judge

    rows = [r for r in read_jsonl(ROOT / "benchmarks" / "gold-protocol" / "gold.jsonl")[:40] if r["label"] != "undecided"]
    result = score(rows, ["classifier+harm-ce", "harm-ce"])
    prompts, answers = [r["prompt"] for r in rows], [r["response"] for r in rows]
    a, b = get_judge("classifier").score(prompts, answers), get_judge("harm-ce").score(prompts, answers)
    expected = [(x + y) / 2 > 0.5 for x, y in zip(a, b)]
    truth = [r["label"] == "harmful" for r in rows]
    # on these rows the mean differs in agreement from either judge alone, and from their max
    for other in ([x > 0.5 for x in a], [y > 0.5 for y in b], [max(x, y) > 0.5 for x, y in zip(a, b)]):
        assert agreement(truth, other) != agreement(truth, expected)
    assert result["judges"]["classifier+harm-ce"]["all"] == agreement(truth, expected)
    # the graded HS of a group: the mean of (probability − label), here against a slow sum
    for model, entry in result["judges"]["classifier+harm-ce"]["by_model"].items():
        idx = [i for i, r in enumerate(rows) if r["model"] == model]
        mean = sum(100 * ((a[i] + b[i]) / 2 - truth[i]) for i in idx) / len(idx)
        g = entry["graded_bias"]
        assert g["diff"] == pytest.approx(mean, abs=0.006) and g["ci95"][0] <= g["diff"] <= g["ci95"][1]
    (prompt_set,) = {r["set"] for r in rows}  # one prompt set here: its group is every row
    by_set = result["judges"]["classifier+harm-ce"]["by_set"][prompt_set]
    assert by_set["graded_bias"]["diff"] == pytest.approx(
        sum(100 * ((x + y) / 2 - t) for x, y, t in zip(a, b, truth)) / len(rows), abs=0.006)
    assert by_set["hs_judge"] == pytest.approx(100 * sum(expected) / len(rows), abs=0.05)


def test_leave_one_out_trains_each_fold_on_every_read_label_file(tmp_path, monkeypatch):
    """``judge_leave_one_out.py --read-labels A --read-labels B``: each fold trains on both files,
    without the left-out set; a fold already trained is reused, not trained again."""
    import judge_leave_one_out as loo

    calls = []

    def fake_train(argv):
        calls.append(argv)
        out = tmp_path / "work" / "advbench"
        out.mkdir(parents=True)
        (out / "harm_ce.json").write_text("{}")

    monkeypatch.setattr(loo, "train", fake_train)
    labels = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    weights = loo.fold("advbench", tmp_path / "work", labels)
    assert weights == tmp_path / "work" / "advbench"
    (argv,) = calls
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--read-labels"] == [str(p) for p in labels]
    assert argv[argv.index("--leave-out") + 1] == "advbench"
    loo.fold("advbench", tmp_path / "work", labels)
    assert len(calls) == 1
