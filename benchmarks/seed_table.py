"""One method against its baseline seed by seed, paired on each seed's own prompts, from committed results.

    # a fine-tuning defence against SFT fine-tuning, both in one folder (section 3e)
    python benchmarks/seed_table.py results/protocol-seeds --finetune surgery --labels Surgery SFT

    # an alignment-stage defence against SFT alignment, both attacked by SFT, one folder (section 3b)
    python benchmarks/seed_table.py results/protocol-seeds-defences --align tvaccine --labels T-Vaccine SFT

    # an alignment on curated data against the full data, two folders (section 3d)
    python benchmarks/seed_table.py results/protocol-seeds --method results/protocol-seeds-pharmacist \\
        --labels Pharmacist full

The pooled tables (``clinic report``, benchmarks/curation_table.py) give one interval over all
seeds; this one shows whether a finding repeats on every seed. For each model both sides hold
(the aligned model, each poison ratio p) and each seed: the harmful score (``--judge``, on
BeaverTails' test prompts) and the SST2 accuracy of both, and their paired difference on the
same prompts or rows (Newcombe interval, exact McNemar p). An accuracy difference whose interval
excludes 0 is in bold: the cost a defence's claim of "equal accuracy" has to answer for.

The baseline is the folder's ``sft`` fine-tuning (``clinic.report.results.BASELINE``); the method is
``--finetune`` in ``--method`` (default: the baseline's folder). With ``--align NAME`` the method is
that alignment (with ``--finetune``) and the baseline SFT alignment with SFT fine-tuning: a folder
that holds several alignments is read one alignment per side. A model the two sides share (the
aligned model of two fine-tuning methods on one alignment) is left out: it would be compared with
itself. A seed one side lacks, or prompts that differ, is an error with its reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from protocol_table import models_of

from clinic.report.results import BASELINE, hs_column, incoherent_column, paired_comparison


def _score(record: dict, column: str) -> float | None:
    k, n = record["counts"].get(column, (0, 0))
    return 100.0 * k / n if n else None


def rows(baseline: Path, method: Path, finetune: str, judge: str, align: str | None = None) -> list[dict]:
    """One row per model and seed: both scores and the paired differences (HS and FA); ``align``:
    the method's alignment, against the SFT alignment."""
    base = models_of(baseline, BASELINE, align=None if align is None else BASELINE)
    mine = models_of(method, finetune, align=align)
    columns = {"HS": hs_column(judge, "beavertails-test"), "FA": "FA sst2"}
    incoherent = incoherent_column("beavertails-test")
    out = []
    for key in [k for k in ("aligned", *sorted(k for k in mine if isinstance(k, float))) if k in mine and k in base]:
        if mine[key][1]["eval dirs"] == base[key][1]["eval dirs"] and method == baseline:
            continue  # one model on both sides
        theirs = {r["seed"]: r for r in base[key][0]}
        for record in sorted(mine[key][0], key=lambda r: r["seed"]):
            other = theirs.get(record["seed"])
            if other is None:
                raise SystemExit(f"{baseline}: no seed {record['seed']} of the {key!r} model to pair with {method}")
            row = {"model": key, "seed": record["seed"],
                   "incoherent": (_score(record, incoherent), _score(other, incoherent))}
            for name, column in columns.items():
                if column not in record["counts"] or column not in other["counts"]:
                    continue
                diff = paired_comparison([record], [other], column)
                if "n/a" in diff:
                    raise SystemExit(f"cannot pair {record['eval dir']} with {other['eval dir']} on {column}: {diff['n/a']}")
                row[name] = (_score(record, column), _score(other, column))
                row[f"Δ {name}"] = diff
            out.append(row)
    if not out:
        side = f"{align} → {finetune}" if align else finetune
        raise SystemExit(f"{method} ({side}) and {baseline} ({BASELINE}) share no model to compare")
    return out


def _diff(d: dict, bold: bool = False) -> str:
    text = f"{d['diff']:+.1f} [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}], p = {d['p']:.1g}"
    return f"**{text}**" if bold and (d["ci95"][0] > 0 or d["ci95"][1] < 0) else text


def markdown(table: list[dict], label: str, baseline_label: str) -> str:
    head = ["model", "seed", f"HS {label} vs {baseline_label} %", "Δ HS [95 % CI], McNemar p",
            f"FA {label} vs {baseline_label} %", "Δ FA [95 % CI], McNemar p", f"incoherent {label} vs {baseline_label} %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = ["aligned" if r["model"] == "aligned" else f"p = {r['model']:g}", str(r["seed"])]
        for name in ("HS", "FA"):
            if name in r:
                cells += [f"{r[name][0]:.1f} vs {r[name][1]:.1f}", _diff(r[f"Δ {name}"], bold=name == "FA")]
            else:
                cells += ["—", "—"]
        mine, theirs = r["incoherent"]
        cells.append("—" if mine is None or theirs is None else f"{mine:.1f} vs {theirs:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="the results folder of the baseline (its sft fine-tunes)")
    parser.add_argument("--method", type=Path, help="the method's results folder (default: the baseline's)")
    parser.add_argument("--finetune", default=BASELINE, help="the method's fine-tuning label (default: sft)")
    parser.add_argument("--labels", nargs=2, metavar=("METHOD", "BASELINE"), default=("method", "baseline"),
                        help="the two sides' names in the table's header")
    parser.add_argument("--align", help="the method's alignment (the baseline: SFT alignment), for folders of several")
    parser.add_argument("--judge", default="harm-ce")
    args = parser.parse_args(argv)
    args.method = args.method or args.baseline
    if args.method == args.baseline and args.finetune == BASELINE and args.align in (None, BASELINE):
        parser.error("the method is the baseline: give --method FOLDER, --finetune NAME or --align NAME")
    return args


def table_markdown(argv: list[str]) -> str:
    """The table for a results page marker (benchmarks/results_page.py)."""
    args = parse_args(argv)
    return markdown(rows(args.baseline, args.method, args.finetune, args.judge, args.align), *args.labels)


if __name__ == "__main__":
    from _common import one_line_errors

    with one_line_errors("seed_table"):
        print(table_markdown(sys.argv[1:]))
