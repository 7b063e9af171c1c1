"""``clinic report`` on hand-made experiment directories: intervals, seeds pooled, paired
comparisons with the SFT baseline, figures. (The end-to-end run is in test_experiment.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clinic.evaluation.stats import paired_difference, wilson_interval
from clinic.report.figures import percent_ylim
from clinic.report.tables import format_delta, metrics_lines, write_report
from clinic.report.results import baseline_key, collect_results

HS = "HS keyword [beavertails-test]"
DELTA = "ΔHS keyword [beavertails-test] vs SFT"
PROMPTS = [f"harmful prompt {i}" for i in range(40)]


def _labels(align, finetune, p, seed, stage="finetuned"):
    return {"model": "tiny", "align": align, "finetune": finetune, "task": "sst2" if p is not None else "", "p": p,
            "seed": seed, "slug": f"{align}-{finetune}", "stage": stage}


def make_experiment(root: Path, evaluations: list[tuple[dict, list[bool], list[str] | None]],
                    correct: list[bool] | None = None, write_generations: bool = True) -> Path:
    """An experiment directory whose evaluations flagged the given prompts (keyword judge)."""
    store = root / "stages"
    stages = []
    for i, (labels, flags, prompts) in enumerate(evaluations):
        prompts = prompts or PROMPTS[: len(flags)]
        stage = {"kind": "evaluate", "dir": f"evaluate-{labels['slug']}-{i:012d}", "hash": f"{i:012d}",
                 "parent": None, "labels": labels, "config": {"judges": ["keyword"]}}
        stages.append(stage)
        path = store / stage["dir"]
        path.mkdir(parents=True)
        n = len(flags)
        metrics = {"harmful": {"beavertails-test": {"keyword": {
            "harmful_score": 100 * sum(flags) / n, "empty_share": 0.0, "n": n}}}, "tasks": {}}
        records = [{"set": "beavertails-test", "prompt": p, "response": "r", "flagged": {"keyword": f}}
                   for p, f in zip(prompts, flags)]
        if correct is not None:
            metrics["tasks"]["sst2"] = {"accuracy": 100 * sum(correct) / len(correct), "n": len(correct),
                                        "rule": "substring"}
            records += [{"set": "sst2", "prompt": f"review {j}", "response": "x", "correct": c}
                        for j, c in enumerate(correct)]
        (path / "metrics.json").write_text(json.dumps(metrics))
        if write_generations:
            (path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (path / "DONE").write_text("")
    plan = {"name": "fake", "model": "tiny", "store": "stages", "stages": stages}
    (root / "plan.json").write_text(json.dumps(plan))
    return root


def flags(both: int, only_model: int, only_baseline: int, neither: int) -> tuple[list[bool], list[bool]]:
    """(model flags, baseline flags) on the same prompts with the given 2×2 counts."""
    model = [True] * both + [True] * only_model + [False] * only_baseline + [False] * neither
    base = [True] * both + [False] * only_model + [True] * only_baseline + [False] * neither
    return model, base


def by_models(rows):
    return {(r["stage"], r["align"], r["finetune"], r["p"]): r for r in rows}


def test_paired_comparison_with_the_sft_baseline(tmp_path):
    defended, attacked = flags(2, 1, 7, 30)  # 3/40 vs 9/40; discordant 1 and 7
    root = make_experiment(tmp_path, [(_labels("sft", "sft", 0.1, 0), attacked, None),
                                      (_labels("sft", "lisa", 0.1, 0), defended, None)])
    rows = by_models(collect_results(root)[0])
    lisa, sft = rows[("finetuned", "sft", "lisa", 0.1)], rows[("finetuned", "sft", "sft", 0.1)]
    assert lisa[HS] == pytest.approx(7.5) and lisa[f"{HS} n"] == 40
    assert lisa[f"{HS} ci95"] == pytest.approx([2.58, 19.86], abs=0.01)  # Wilson 3/40
    delta = lisa[DELTA]
    assert delta["diff"] == pytest.approx(-15.0)
    assert delta["p"] == pytest.approx(18 / 256)  # 2 * P(Bin(8, 1/2) <= 1)
    assert delta["ci95"] == pytest.approx(list(paired_difference(defended, attacked).ci95))
    assert lisa["baseline"] == "sft → sft"
    assert DELTA not in sft  # the baseline itself

    write_report(root)
    md = (root / "report" / "results.md").read_text()
    header = md.splitlines()[2]
    assert f"{HS} % [95 % CI], n=40" in header and f"{DELTA} [95 % CI], McNemar p" in header
    assert "| 7.5 [2.6, 19.9] | -15.0 [" in md and ", p=0.07 |" in md
    assert "| 22.5 [12.3, 37.5] | (baseline) |" in md
    csv_text = (root / "report" / "results.csv").read_text()
    assert f"{DELTA} p" in csv_text.splitlines()[0] and f"{HS} ci95 low" in csv_text.splitlines()[0]


def test_seeds_are_pooled_into_one_row(tmp_path):
    d0, a0 = flags(1, 1, 6, 32)
    d1, a1 = flags(0, 3, 2, 35)
    root = make_experiment(tmp_path, [(_labels("sft", "sft", 0.1, 0), a0, None),
                                      (_labels("sft", "lisa", 0.1, 0), d0, None),
                                      (_labels("sft", "sft", 0.1, 1), a1, None),
                                      (_labels("sft", "lisa", 0.1, 1), d1, None)])
    rows = collect_results(root)[0]
    assert len(rows) == 2
    lisa = by_models(rows)[("finetuned", "sft", "lisa", 0.1)]
    assert lisa["seeds"] == [0, 1]
    assert lisa[HS] == pytest.approx((5.0 + 7.5) / 2)
    assert lisa[f"{HS} seed range"] == pytest.approx([5.0, 7.5])
    assert lisa[f"{HS} n"] == 80
    assert lisa[f"{HS} ci95"] == pytest.approx(list(wilson_interval(5, 80)))  # pooled, not averaged
    # the paired comparison runs over both seeds' prompts, each seed against the same seed
    assert lisa[DELTA]["n"] == 80 and (lisa[DELTA]["b"], lisa[DELTA]["c"]) == (4, 8)
    assert lisa[DELTA]["diff"] == pytest.approx(paired_difference(d0 + d1, a0 + a1).diff)
    write_report(root)
    assert "5.0-7.5" in (root / "report" / "results.md").read_text()


def test_different_prompts_are_not_compared(tmp_path):
    defended, attacked = flags(2, 1, 7, 30)
    other = [f"another prompt {i}" for i in range(40)]
    root = make_experiment(tmp_path, [(_labels("sft", "sft", 0.1, 0), attacked, other),
                                      (_labels("vaccine", "sft", 0.1, 0), defended, None)])
    row = by_models(collect_results(root)[0])[("finetuned", "vaccine", "sft", 0.1)]
    assert row[DELTA] == {"n/a": "prompts differ"}
    write_report(root)
    assert "| n/a: prompts differ |" in (root / "report" / "results.md").read_text()


def test_missing_baseline_seed_and_old_metrics(tmp_path):
    defended, attacked = flags(2, 1, 7, 30)
    root = make_experiment(tmp_path / "a", [(_labels("sft", "sft", 0.1, 0), attacked, None),
                                            (_labels("sft", "lisa", 0.1, 1), defended, None)])
    row = by_models(collect_results(root)[0])[("finetuned", "sft", "lisa", 0.1)]
    assert row[DELTA] == {"n/a": "baseline has no seed 1"}
    # metrics.json without ci95 and no generations.jsonl (written before intervals existed)
    old = make_experiment(tmp_path / "b", [(_labels("sft", "sft", 0.1, 0), attacked, None),
                                           (_labels("sft", "lisa", 0.1, 0), defended, None)], write_generations=False)
    row = by_models(collect_results(old)[0])[("finetuned", "sft", "lisa", 0.1)]
    assert row[f"{HS} ci95"] == pytest.approx(list(wilson_interval(3, 40)))
    assert format_delta(row[DELTA]) == "n/a: no per-prompt outcomes (generations.jsonl)"


def test_same_labels_with_other_settings_are_not_pooled(tmp_path):
    defended, attacked = flags(2, 1, 7, 30)
    root = make_experiment(tmp_path, [(_labels("sft", "sft", 0.1, 0), attacked, None),
                                      (_labels("sft", "sft", 0.1, 0), defended, None),  # e.g. another n
                                      (_labels("sft", "lisa", 0.1, 0), defended, None)])
    plan = json.loads((root / "plan.json").read_text())
    plan["stages"][1]["config"] = {"judges": ["keyword"], "n": 500}
    (root / "plan.json").write_text(json.dumps(plan))
    rows = collect_results(root)[0]
    assert len(rows) == 3 and [r["seeds"] for r in rows] == [[0], [0], [0]]
    assert rows[0]["settings"] != rows[1]["settings"] and "settings" not in rows[2]
    assert rows[2][DELTA] == {"n/a": "several baselines share these labels"}


def test_fine_tune_accuracy_is_compared_too(tmp_path):
    model, base = flags(10, 0, 5, 5)
    root = make_experiment(tmp_path, [(_labels("sft", "sft", 0.1, 0), [False] * 4, None),
                                      (_labels("sft", "lisa", 0.1, 0), [False] * 4, None)], correct=None)
    rows = collect_results(root)[0]
    assert by_models(rows)[("finetuned", "sft", "lisa", 0.1)][DELTA]["p"] == 1.0
    root = make_experiment(tmp_path / "fa", [(_labels("sft", "sft", 0.1, 0), [False] * 4, None)], correct=base)
    row = collect_results(root)[0][0]
    assert row["FA sst2 n"] == 20 and row["FA sst2"] == pytest.approx(75.0)
    assert row["FA sst2 ci95"] == pytest.approx(list(wilson_interval(15, 20)))


@pytest.mark.parametrize("labels, expected", [
    (("finetuned", "sft", "lisa", "sst2", 0.1), ("finetuned", "sft", "sft", "sst2", 0.1)),  # defended fine-tune
    (("finetuned", "vaccine", "sft", "sst2", 0.1), ("finetuned", "sft", "sft", "sst2", 0.1)),  # alignment defence
    (("finetuned", "vaccine", "lisa", "sst2", 0.2), ("finetuned", "sft", "sft", "sst2", 0.2)),  # both
    (("finetuned", "none", "lisa", "sst2", 0.1), ("finetuned", "none", "sft", "sst2", 0.1)),  # no alignment stays
    (("aligned", "tvac-s4", "none", "", None), ("aligned", "sft", "none", "", None)),
    (("finetuned", "sft", "sft", "sst2", 0.1), None),  # its own baseline
    (("base", "none", "none", "", None), None),
])
def test_baseline_rule(labels, expected):
    assert baseline_key(labels) == expected


def test_percent_ylim_gives_a_constant_series_a_real_axis():
    low, high = percent_ylim([0.0], [0.0])  # FA = 0 everywhere, intervals collapsed
    assert low <= 0 and high - low >= 10 and low >= -2
    low, high = percent_ylim([97.0, 99.0], [100.0, 100.0])
    assert high >= 100 and high - low >= 10 and high <= 102
    assert percent_ylim([10.0], [60.0]) == pytest.approx((7.5, 62.5))  # wide enough: a 5 % margin only


def test_figures_draw_intervals(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    closed, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (closed.append(fig), close(fig)))
    quarter = [True] * 10 + [False] * 30
    root = make_experiment(tmp_path, [(_labels("sft", "sft", p, 0), quarter, None) for p in (0.0, 0.1, 0.2)],
                           correct=[False] * 10)
    write_report(root)
    for name in ("hs_vs_p.png", "fa_vs_p.png"):
        assert (root / "report" / name).stat().st_size > 1000
    fa = next(f for f in closed if f.axes[0].get_title() == "FA sst2")
    ax = fa.axes[0]
    low, high = ax.get_ylim()
    assert low <= 0 and high >= wilson_interval(0, 10)[1] and high - low >= 10  # FA = 0: a real axis
    hs = next(f for f in closed if f.axes[0].get_title() == HS)
    segments = hs.axes[0].containers[0].lines[2][0].get_segments()  # each p's bar spans the Wilson interval
    assert [end for s in segments for end in (s[0][1], s[1][1])] == pytest.approx(list(wilson_interval(10, 40)) * 3)


def test_metrics_lines_state_interval_and_n():
    metrics = {"harmful": {"bt": {"keyword": {"harmful_score": 7.5, "empty_share": 0.0, "n": 40}}},
               "tasks": {"sst2": {"accuracy": 50.0, "n": 100, "rule": "substring", "ci95": [40.4, 59.6]}}}
    lines = metrics_lines(metrics)
    assert "7.5 [2.6, 19.9]% (95 % Wilson CI, n=40" in lines[0]
    assert "50.0 [40.4, 59.6]% (95 % Wilson CI, n=100)" in lines[1]


def _add_intervals():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "add_intervals.py"
    spec = importlib.util.spec_from_file_location("add_intervals", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_tables_gain_intervals_without_changing_numbers():
    rewrite = _add_intervals().rewrite
    text = "intro\n\n| model | HS (%) | s |\n|---|---|---|\n| a | **7.5** / 0.0 | 12.5 |\n| b |  | 3 |\n"
    out, tables = rewrite(text, {"HS (%)": 40}, "doc.md")
    assert tables == 1
    assert "| model | HS (%) [95 % CI], n=40 | s |" in out
    assert "| a | **7.5** [2.6, 19.9] / 0.0 [0.0, 8.8] | 12.5 |" in out  # other columns untouched
    assert rewrite(out, {"HS (%) [95 % CI], n=40": 40}, "doc.md")[0] == out  # cells with intervals stay
    with pytest.raises(SystemExit, match="not a whole count of n=40"):
        rewrite("| HS (%) |\n|---|\n| 12.6 |\n", {"HS (%)": 40}, "doc.md")


def test_label_cells_keep_the_poison_ratio_as_written():
    """p = 0.05 must not print as 0.1 (the score cells' one decimal): two models would look alike."""
    from clinic.report.tables import _label_cell

    assert [_label_cell(v) for v in (0.05, 0.1, 0.0, 0.2)] == ["0.05", "0.1", "0", "0.2"]
    assert _label_cell([0, 1]) == "0,1" and _label_cell(None) == "" and _label_cell("sft") == "sft"


def test_the_report_leads_with_one_screen_and_names_every_judge_it_shows(tmp_path):
    """The adaptive experiment's report: the first screen is each defence's worst case under the
    guard against SFT's (the figure and a four-row table, harm-ce the headline), the wide tables
    come after, folded; the header names every judge the tables show, re-judged ones included
    (the evaluate stages ran keyword and classifier; harm-ce was added by benchmarks/rejudge.py)."""
    import re

    from clinic.report.tables import write_report

    results = Path(__file__).resolve().parents[1] / "results" / "adaptive-smollm2"
    root = tmp_path / "exp"
    root.mkdir()
    for name in ("plan.json", "experiment.yaml"):
        (root / name).write_text((results / name).read_text())
    plan = json.loads((root / "plan.json").read_text())
    plan["store"] = str((results / plan["store"]).resolve())
    (root / "plan.json").write_text(json.dumps(plan))
    page = (write_report(root, tmp_path / "report") / "report.html").read_text()
    assert "judges in the tables: keyword, classifier, harm-ce" in page
    glance, details = page.split("<h2>Details</h2>")
    assert "At a glance: HS harm-ce [beavertails-test]" in glance and "adaptive.png" in glance
    first = glance.split("<table class='glance'>")[1].split("</table>")[0]
    assert first.count("<tr>") == 1 + 4  # header + sft, lisa, surgery, tvaccine
    assert "sft → surgery" in first and "advantage over SFT holds" in first
    assert "<details><summary>Every evaluated model (35 rows)" in details
    assert not re.search(r"<table(?! class='glance')", glance)  # nothing wide before the details


def test_sampled_flags_are_the_counted_ones_and_the_same_for_a_seed(tmp_path):
    """``clinic report --sample-flags``: per evaluation, judge and prompt set, a seeded draw over the
    answers the table counts as harmful (flagged and coherent, in the order judged), the same draw
    for the same seed whatever else is read; --where keeps the matching evaluations only."""
    import random

    from clinic.cli import main
    from clinic.report.flags import FlagSample, sample_flags
    from clinic.rundir import load_plan

    model, base = flags(12, 6, 2, 20)
    root = make_experiment(tmp_path / "exp", [(_labels("sft", "sft", 0.1, 0), base, None),
                                              (_labels("vaccine", "sft", 0.1, 0), model, None)])
    gen = root / "stages" / f"evaluate-vaccine-sft-{1:012d}" / "generations.jsonl"
    rows = [json.loads(line) for line in gen.read_text().splitlines()]
    for i, row in enumerate(rows):  # distinct answers; the first flagged one is token salad
        row["response"] = "zq xv zq " * 40 if i == 0 else f"Here is how, step {i}: first you find the place."
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    counted = [r["prompt"] for r in rows[1:] if r["flagged"]["keyword"]]
    plan, store = load_plan(root)
    spec = FlagSample(5, seed=7, where=(("align", "vaccine"), ("p", "0.10")))
    (entry,) = sample_flags(plan, store, spec)
    assert (entry["flags"], entry["answers"]) == (17, 40)  # 18 flagged, one of them incoherent
    assert [s["prompt"] for s in entry["sample"]] == random.Random(7).sample(counted, 5)
    assert sample_flags(plan, store, FlagSample(5, seed=7))[1] == entry  # drawn after SFT's: the same answers
    assert len(sample_flags(plan, store, FlagSample(50, where=(("align", "sft"),)))[0]["sample"]) == 14
    assert main(["report", str(root), "--output", str(tmp_path / "r"), "--sample-flags", "5", "--flags-seed", "7",
                 "--where", "align=vaccine"]) == 0
    page = (tmp_path / "r" / "flags.md").read_text()
    assert "--sample-flags 5 --flags-seed 7 --where align=vaccine" in page and "17 of 40 answers flagged" in page
    assert page.count("**") == 2 * 5 and "zq xv" not in page


def test_where_matches_labels_as_people_write_them():
    from clinic.report.flags import _same

    assert _same(0.2, "0.20") and _same(0.2, "0.2") and _same(3, "3.0") and not _same(0.1, "0.2")
    assert _same(None, "none") and _same("", "none") and _same("", "") and not _same("sft", "none")
    assert _same("tvac-r1", "tvac-r1") and not _same("tvac-r1", "tvac-r1-s15") and not _same(0.2, "vaccine")
