"""benchmarks/seed_table.py, on the committed results folders (no run needed): the per-seed
tables of docs/results-smollm2.md sections 3d and 3e."""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import pytest
from _results import stage_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SEEDS = ROOT / "results" / "protocol-seeds"
COLUMN = "HS harm-ce [beavertails-test]"


def _flags(folder: Path, finetune: str | None, p: float | None, seed: int, align: str | None = None) -> dict:
    """Prompt -> harm-ce flag of one evaluation, read straight from its generations.jsonl (not
    through clinic.report.results): the independent side of the check. An incoherent answer is
    not harmful (issue 35), whatever the judge said when it ran."""
    from clinic.evaluation.coherence import is_incoherent

    plan = json.loads((folder / "plan.json").read_text())["stages"]
    (stage,) = [s for s in plan if s["kind"] == "evaluate" and s["labels"].get("finetune") == finetune
                and s["labels"].get("p") == p and s["labels"]["seed"] == seed and "repair" not in s["labels"]
                and align in (None, s["labels"].get("align"))]
    path = stage_dir(folder, stage["dir"]) / "generations.jsonl"
    text = path.read_text() if path.exists() else gzip.decompress(path.with_suffix(".jsonl.gz").read_bytes()).decode()
    lines = text.splitlines()
    return {r["prompt"]: r["flagged"]["harm-ce"] and not is_incoherent(r["response"])
            for r in map(json.loads, lines) if "flagged" in r}


def test_surgery_against_sft_seed_by_seed_matches_a_hand_count():
    from seed_table import rows

    table = rows(SEEDS, SEEDS, "surgery", "harm-ce")
    # one alignment shared by both fine-tunings: the aligned model is not compared with itself
    assert [(r["model"], r["seed"]) for r in table] == [(p, s) for p in (0.0, 0.1, 0.2) for s in (0, 1, 2)]
    for row in table:
        mine, theirs = (_flags(SEEDS, ft, row["model"], row["seed"]) for ft in ("surgery", "sft"))
        assert mine.keys() == theirs.keys() and len(mine) == 200
        diff = 100 * (sum(mine.values()) - sum(theirs.values())) / 200
        assert row["Δ HS"]["diff"] == pytest.approx(diff)
        assert row["HS"] == pytest.approx((100 * sum(mine.values()) / 200, 100 * sum(theirs.values()) / 200))
        # exact McNemar by hand: twice the binomial tail of the rarer discordant pair, at most 1
        b = sum(mine[k] and not theirs[k] for k in mine)
        c = sum(theirs[k] and not mine[k] for k in mine)
        tail = sum(math.comb(b + c, i) for i in range(min(b, c) + 1)) / 2 ** (b + c)
        assert row["Δ HS"]["p"] == pytest.approx(min(1.0, 2 * tail), rel=1e-9)


def test_an_alignment_against_sft_alignment_in_one_folder_matches_a_hand_count():
    """results/c2-tvac holds SFT and T-Vaccine alignments, each attacked by SFT: --align reads one
    alignment per side, the aligned models compared too (they differ)."""
    from seed_table import rows

    folder = ROOT / "results" / "c2-tvac"
    table = rows(folder, folder, "sft", "harm-ce", align="tvaccine")
    assert [r["model"] for r in table] == ["aligned", 0.0, 0.1, 0.2] and {r["seed"] for r in table} == {0}
    labels = json.loads((folder / "plan.json").read_text())["stages"]
    assert any(s["labels"].get("align") == "tvaccine" for s in labels)
    for row in table:
        finetune, p = ("none", None) if row["model"] == "aligned" else ("sft", row["model"])
        mine, theirs = (_flags(folder, finetune, p, 0, align) for align in ("tvaccine", "sft"))
        assert mine.keys() == theirs.keys() and len(mine) == 200
        assert row["Δ HS"]["diff"] == pytest.approx(100 * (sum(mine.values()) - sum(theirs.values())) / 200)


def test_the_one_significant_accuracy_cost_is_bold():
    from seed_table import markdown, rows

    text = markdown(rows(SEEDS, SEEDS, "surgery", "harm-ce"), "Surgery", "SFT")
    bold = [line for line in text.splitlines() if "**" in line]
    # seed 1 at p = 0.2: 80.0 against 85.5 %, the one FA interval that excludes 0 (docs, section 3e)
    assert len(bold) == 1 and bold[0].startswith("| p = 0.2 | 1 | ") and "**-5.5 [-10.4, -0.7]" in bold[0]
    assert "HS Surgery vs SFT %" in text.splitlines()[0]


def test_two_folders_are_paired_on_each_seed():
    from seed_table import rows

    table = rows(SEEDS, ROOT / "results" / "protocol-seeds-pharmacist", "sft", "harm-ce")
    assert [(r["model"], r["seed"]) for r in table][:3] == [("aligned", 0), ("aligned", 1), ("aligned", 2)]
    seed2 = next(r for r in table if r["model"] == 0.1 and r["seed"] == 2)
    assert seed2["HS"] == (53.5, 22.0) and seed2["Δ HS"]["diff"] == pytest.approx(31.5)


def test_a_seed_the_baseline_lacks_is_an_error_naming_it():
    from seed_table import rows

    with pytest.raises(SystemExit, match="no seed 1"):
        rows(ROOT / "results" / "calib-b", ROOT / "results" / "protocol-seeds-pharmacist", "sft", "harm-ce")


def test_comparing_the_baseline_with_itself_is_refused(capsys):
    from seed_table import parse_args

    with pytest.raises(SystemExit) as error:
        parse_args([str(SEEDS)])
    assert error.value.code == 2 and "--finetune" in capsys.readouterr().err


@pytest.mark.parametrize("script, args, message", [
    ("seed_table.py", ["results/calib-b", "--method", "results/protocol-seeds-pharmacist"], "no seed 1"),
    ("attack_table.py", ["results/calib-b"], "no attack-space evaluations"),
    ("curation_table.py", ["--full", "results/c2-tvac", "results/c5-pharmacist"], "choose one with --align"),
])
def test_a_table_scripts_refusal_is_one_line_and_exit_2(script, args, message):
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script[:-3]}: error: ") and message in lines[0]
