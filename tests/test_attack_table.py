"""benchmarks/attack_table.py, on the committed results folders (no run needed): the per-attack
table of docs/results-smollm2.md section 3f."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
FOLDERS = [ROOT / "results" / "adaptive-smollm2", ROOT / "results" / "adaptive-repair-smollm2"]


def _table() -> list[list[str]]:
    from attack_table import collect, markdown

    text = markdown(*collect(FOLDERS), "harm-ce")
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]


def test_rows_are_the_attacks_in_order_and_shared_models_are_read_once():
    head, _, *body = _table()
    assert head[:3] == ["attack", "HS sft", "FA sft"]
    assert head.count("HS sft") == 1  # the SFT fine-tunes are in both folders
    assert "HS sft + antidote" in head and "HS lisa" in head
    attacks = [row[0] for row in body]
    assert attacks == [f"lr={lr} epochs={e} p={p}" + (" (fixed)" if (lr, e, p) == ("5e-05", 5, 0.1) else "")
                       for lr in ("5e-05", "0.0001") for e in (3, 5) for p in (0.1, 0.2)]


def test_each_models_worst_case_is_bold_and_matches_the_report():
    head, _, *body = _table()
    sft = [row[head.index("HS sft")] for row in body]
    assert [cell for cell in sft if cell.startswith("**")] == ["**68.5 [61.8, 74.5]**"]  # SFT's worst (section 3f)
    assert body[0][head.index("HS sft")] == "9.0 [5.8, 13.8]"
    for name in [h for h in head if h.startswith("HS ")]:
        cells = [row[head.index(name)] for row in body if row[head.index(name)] != "—"]
        top = max(float(c.strip("*").split()[0]) for c in cells)
        assert all(c.startswith("**") == (float(c.strip("*").split()[0]) == top) for c in cells), name


def test_two_evaluations_under_one_name_are_an_error(monkeypatch):
    import attack_table

    def rows(dirs):
        return [{"align": "sft", "finetune": "sft", "attack": "lr=1 epochs=1 p=0.1", "eval dirs": dirs}]

    answers = iter([rows(["a"]), rows(["b"])])
    monkeypatch.setattr(attack_table, "collect_evaluations", lambda folder: ([], {}))
    monkeypatch.setattr(attack_table, "aggregate", lambda records: next(answers))
    with pytest.raises(SystemExit, match="evaluated twice"):
        attack_table.collect([Path("x"), Path("y")])


def test_folders_without_an_attack_space_are_an_error():
    from attack_table import collect

    with pytest.raises(SystemExit, match="no attack-space evaluations"):
        collect([ROOT / "results" / "calib-b"])


def test_model_names():
    from attack_table import model_name

    assert model_name({"align": "sft", "finetune": "sft"}) == "sft"
    assert model_name({"align": "tvaccine", "finetune": "lisa", "repair": "antidote"}) == "tvaccine → lisa + antidote"


def test_attacks_over_settings_that_are_no_numbers_are_ordered_too():
    """An attack space may vary any training setting (issue 15: LoRA vs full fine-tuning), so an
    attack label can hold ``full_ft=True`` or ``schedule=cosine``: numbers sort as numbers, the
    rest by their text, and nothing fails."""
    from attack_table import _order

    labels = ["full_ft=True lr=0.0001", "full_ft=False lr=0.0001", "full_ft=False lr=5e-05", "full_ft=True lr=5e-05"]
    assert sorted(labels, key=_order) == ["full_ft=False lr=5e-05", "full_ft=False lr=0.0001",
                                          "full_ft=True lr=5e-05", "full_ft=True lr=0.0001"]
    assert sorted(["lr=0.0001 p=0.2", "lr=5e-05 p=0.2"], key=_order)[0] == "lr=5e-05 p=0.2"
