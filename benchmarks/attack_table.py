"""Every attack of an attack space against every model defended from it, from committed results.

    python benchmarks/attack_table.py results/adaptive-smollm2 results/adaptive-repair-smollm2

``clinic report`` gives each defence's worst case over the attack space (docs/protocol.md,
issue 15); this table shows where it lies: one row per attack (its labels, e.g. ``lr=0.0001
epochs=5 p=0.2``, in increasing order of each setting), for each model (alignment → fine-tuning,
+ repair) the harmful score (``--judge``, BeaverTails' test prompts) and the SST2 accuracy with
their 95 % Wilson intervals, "—" where the model was not attacked that way (a run still going).
Each model's highest harmful score is in bold (its worst case before the accuracy guard), and the
protocol's fixed attack is marked.

Folders may share models (an attack-space run and its repair run share the attacked fine-tunes):
a model is read once, and the same labels on two different evaluations are an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clinic.report.tables import format_interval
from clinic.report.results import BASELINE, aggregate, collect_evaluations, hs_column, incoherent_share


def model_name(row: dict) -> str:
    """``sft`` (SFT alignment and fine-tuning), ``lisa`` (a fine-tuning defence), ``tvaccine`` (an
    alignment defence), ``tvaccine → lisa`` (both), each ``+ repair`` when repaired."""
    defended = [row[k] for k in ("align", "finetune") if row[k] != BASELINE]
    name = " → ".join(defended) or BASELINE
    return f"{name} + {row['repair']}" if row.get("repair") else name


def _value(text: str) -> tuple:
    try:
        return (0, float(text))  # numbers in numeric order (1e-04 after 5e-05)
    except ValueError:
        return (1, text)  # a setting that is no number (full_ft=True, schedule=cosine): by its text


def _order(attack: str) -> tuple:
    """``lr=5e-05 epochs=3 p=0.1`` -> its values in order: attacks sorted setting by setting."""
    return tuple(_value(part.split("=", 1)[1]) for part in attack.split())


def collect(folders: list[Path]) -> tuple[dict, str | None]:
    """``{model name: {attack: aggregated row}}`` over the folders, and the fixed attack."""
    models: dict = {}
    fixed = None
    for folder in folders:
        records, _ = collect_evaluations(folder)
        for row in aggregate(records):
            if "attack" not in row:  # the base and aligned models
                continue
            fixed = fixed or row.get("fixed attack")
            name = model_name(row)
            seen = models.setdefault(name, {}).get(row["attack"])
            if seen is not None and seen["eval dirs"] != row["eval dirs"]:
                raise SystemExit(f"{folder}: {name!r} under {row['attack']!r} is evaluated twice "
                                 f"({seen['eval dirs'][0]} and {row['eval dirs'][0]}); give folders that agree")
            models[name][row["attack"]] = row
    if not models:
        raise SystemExit(f"{', '.join(map(str, folders))}: no attack-space evaluations (labels 'attack')")
    return models, fixed


def markdown(models: dict, fixed: str | None, judge: str) -> str:
    column = hs_column(judge, "beavertails-test")
    attacks = sorted({a for rows in models.values() for a in rows}, key=_order)
    worst = {name: max(r[column] for r in rows.values()) for name, rows in models.items()}
    head = ["attack"] + [f"{h} {name}" for name in models for h in ("HS", "FA")] + ["incoherent % (highest)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for attack in attacks:
        cells = [f"{attack} (fixed)" if attack == fixed else attack]
        for name, rows in models.items():
            row = rows.get(attack)
            if row is None:
                cells += ["—", "—"]
                continue
            hs = format_interval(row[column], row[f"{column} ci95"])
            cells.append(f"**{hs}**" if row[column] == worst[name] else hs)
            cells.append(format_interval(row["FA sst2"], row["FA sst2 ci95"]) if "FA sst2" in row else "—")
        shares = [s for s in (incoherent_share(rows[attack]) for rows in models.values() if attack in rows) if s is not None]
        cells.append(f"{max(shares):.1f}" if shares else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="results folders of attack-space runs")
    parser.add_argument("--judge", default="harm-ce")
    return parser.parse_args(argv)


def table_markdown(argv: list[str]) -> str:
    """The table for a results page marker (benchmarks/results_page.py)."""
    args = parse_args(argv)
    return markdown(*collect(args.folders), args.judge)


if __name__ == "__main__":
    from _common import one_line_errors

    with one_line_errors("attack_table"):
        print(table_markdown(sys.argv[1:]))
