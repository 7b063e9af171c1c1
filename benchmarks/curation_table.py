"""Claim C5's table: alignment on a curated subset against the full data, from the committed results.

    python benchmarks/curation_table.py --full results/calib-b results/c5-pharmacist results/c5-random

Each folder is a `clinic run` results folder of the protocol (docs/protocol.md): ``--full`` the
alignment on all the data (cell B), the others an alignment on a curated subset
(``configs/protocol-curation-*.yaml``), each with the same attacks. For the aligned model and each
attacked one: HS with its 95 % Wilson interval, the paired difference to the full data on the same
prompts (Newcombe interval, exact McNemar p), FA; and the curation's own figures: selector, rows
kept, selector seconds and alignment steps. A folder of several seeds (configs/protocol-seeds-*.yaml)
pools them: scores are means with the Wilson interval of all seeds' items, differences are paired
seed by seed (a seed the full-data folder lacks is an error), and the seeds column says which
seeds each row holds:

    python benchmarks/curation_table.py --full results/protocol-seeds results/protocol-seeds-pharmacist

``--align`` reads one alignment method of folders that hold several (C5 under T-Vaccine alignment:
the full-data cell results/c2-tvac holds SFT and T-Vaccine):

    python benchmarks/curation_table.py --align tvaccine --full results/c2-tvac results/c5-pharmacist-tvaccine
"""

from __future__ import annotations

import argparse
import json
from fnmatch import fnmatch
from pathlib import Path

from protocol_table import fa_of, hs_of, incoherent_text, models_of, paired_text

from clinic.report.results import hs_column
from clinic.rundir import load_plan


def curation_of(folder: Path, align: str | None = None) -> dict:
    """The curate stages' metrics and the alignments' steps in a results folder ({} for none).

    With several seeds (one curate and one align stage each) the selector seconds are their mean;
    the counts (rows kept, alignment rows and steps) must agree across the seeds."""
    plan, store = load_plan(folder)  # the plan's stages alone: the store is the results tree's, shared
    done = sorted(store / s["dir"] for s in plan["stages"] if (store / s["dir"] / "DONE").exists())
    found: dict[str, list] = {}
    for stage in (d for d in done if fnmatch(d.name, "curate-*")):
        m = json.loads((stage / "metrics.json").read_text())
        for key in ("selector", "k", "n_candidates", "selector_seconds"):
            found.setdefault(key, []).append(m[key])
    for stage in (d for d in done if fnmatch(d.name, f"align-{align}-*" if align else "align-*")):
        m = json.loads((stage / "metrics.json").read_text())
        for key, value in (("align_rows", m["n_train"]), ("align_steps", m["steps"]), ("align_seconds", m["train_seconds"])):
            found.setdefault(key, []).append(value)
    out = {}
    for key, values in found.items():
        if key.endswith("seconds"):
            out[key] = sum(values) / len(values)
        elif len(set(values)) > 1:
            raise SystemExit(f"{folder}: its stages disagree on {key} ({sorted(set(values))})")
        else:
            out[key] = values[0]
    return out


def _seeds(models: dict) -> str:
    """The seeds of a folder's models: ``0,1,2``, or per model where they differ (a run still going)."""
    def names(key):
        return ",".join(str(s) for s in models[key][1]["seeds"])
    keys = [k for k in models if k != "base"]
    if len({names(k) for k in keys}) <= 1:
        return names(keys[0]) if keys else "—"
    return "; ".join(f"{k if k == 'aligned' else f'p={k:g}'} {names(k)}" for k in keys)


def rows(full: Path, curated: list[Path], judge: str, align: str | None = None) -> list[dict]:
    column = hs_column(judge, "beavertails-test")
    base = models_of(full, align=align)
    out = []
    for folder in [full, *curated]:
        models = models_of(folder, align=align)
        info = curation_of(folder, align)
        row = {"data": info.get("selector", "full data") if folder != full else "full data", "folder": str(folder),
               **{k: v for k, v in info.items() if k != "selector"}, "seeds": _seeds(models),
               "incoherent": incoherent_text(m for k, m in models.items() if k != "base")}
        for key in ["aligned", *sorted(k for k in models if isinstance(k, float))]:
            if key not in base:
                continue
            name = "aligned" if key == "aligned" else f"p={key:g}"
            row[name] = hs_of(models[key], column)[0]
            row[f"FA {name}"] = fa_of(models[key])[0]
            if folder != full:
                row[f"{name} - full"] = paired_text(models[key], base[key], column)
        out.append(row)
    return out


def markdown(table: list[dict]) -> str:
    keys = [k for k in ("aligned", "p=0.1", "p=0.2") if any(k in r for r in table)]
    head = ["alignment data", "seeds", "rows (steps)", "selector s"]
    for k in keys:
        head += [f"HS {k}", f"Δ {k} vs full", f"FA {k}"]
    head.append("incoherent % (highest)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["data"], r["seeds"], f"{r.get('align_rows', '—')} ({r.get('align_steps', '—')})",
                 f"{r['selector_seconds']:.0f}" if "selector_seconds" in r else "—"]
        for k in keys:
            cells += [r.get(k, "—"), r.get(f"{k} - full", "—"), r.get(f"FA {k}", "—")]
        cells.append(r["incoherent"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curated", nargs="+", type=Path)
    parser.add_argument("--full", type=Path, required=True, help="the full-data run (e.g. results/calib-b)")
    parser.add_argument("--judge", default="harm-ce")
    parser.add_argument("--align", help="the alignment method to read (a folder may hold several, e.g. sft and tvaccine)")
    parser.add_argument("--markdown", action="store_true")
    return parser.parse_args(argv)


def table_markdown(argv: list[str]) -> str:
    """The table for a results page marker (benchmarks/results_page.py)."""
    args = parse_args(argv)
    return markdown(rows(args.full, args.curated, args.judge, args.align))


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    table = rows(args.full, args.curated, args.judge, args.align)
    if args.markdown:
        print(markdown(table))
    else:
        for row in table:
            print(json.dumps(row, ensure_ascii=False))
    return table


if __name__ == "__main__":
    from _common import one_line_errors

    with one_line_errors("curation_table"):
        main()
