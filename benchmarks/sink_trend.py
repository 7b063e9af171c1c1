"""Do positive sink heads rise with p? (claim C4 of the protocol issue) From an experiment folder:
every sink stage's positive-head count with its bootstrap interval, and each fine-tuned model
compared *paired* (same samples, clinic.sink.bootstrap) with the same method's p = 0 model.

    python benchmarks/sink_trend.py results/defences-ft [--n-boot 2000] [--markdown]

Writes the rows as JSON to benchmarks/results/sink_trend-<folder>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rows(folder: Path, n_boot: int) -> list[dict]:
    from clinic.rundir import load_plan
    from clinic.sink.bootstrap import load_per_sample, paired_count_difference

    plan, store = load_plan(folder)
    sinks = [s for s in plan["stages"] if s["kind"] == "sink" and (Path(store) / s["dir"] / "DONE").exists()]
    out, values = [], {}
    for stage in sinks:
        labels = stage["labels"]
        path = Path(store) / stage["dir"]
        entry = json.loads((path / "sink.json").read_text())["entries"][-1]
        key = (labels.get("seed"), labels.get("align"), labels.get("finetune"), labels.get("task"))
        values[(key, labels.get("p"))] = load_per_sample(path)
        out.append({"seed": labels.get("seed"), "align": labels.get("align"), "finetune": labels.get("finetune") or "none",
                    "task": labels.get("task"), "p": labels.get("p"), "positive_heads": entry["positive_heads"],
                    "ci95": entry.get("positive_heads_ci95"), "total_heads": entry["total_heads"], "dir": stage["dir"],
                    "_key": key})
    for row in out:
        base = values.get((row["_key"], 0.0))
        if base is not None and row["p"] not in (None, 0, 0.0):
            row["vs_p0"] = paired_count_difference(base, values[(row["_key"], row["p"])], n_boot=n_boot)
        if row["finetune"] not in ("sft", "none"):
            sft = values.get(((row["_key"][0], row["_key"][1], "sft", row["_key"][3]), row["p"]))
            if sft is not None:
                row["vs_sft"] = paired_count_difference(sft, values[(row["_key"], row["p"])], n_boot=n_boot)
    for row in out:
        del row["_key"]
    return out


def markdown(found: list[dict]) -> str:
    lines = ["| align | fine-tune | p | positive sink heads [bootstrap 2.5-97.5 % range] | of | Δ vs p = 0 [paired bootstrap range] | share of resamples above p = 0 | Δ vs SFT at this p [paired bootstrap range] |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(found, key=lambda r: (r["finetune"] != "none", r["finetune"], r["p"] or 0)):
        ci = f" [{r['ci95'][0]:.0f}, {r['ci95'][1]:.0f}]" if r.get("ci95") else ""
        d = r.get("vs_p0")
        delta = f"{d['difference']:+d} [{d['ci95'][0]:+.0f}, {d['ci95'][1]:+.0f}]" if d else ""
        share = f"{d['share_b_above_a']:.2f}" if d else ""
        p = "" if r["p"] is None else f"{r['p']:g}"
        s = r.get("vs_sft")
        vs_sft = f"{s['difference']:+d} [{s['ci95'][0]:+.0f}, {s['ci95'][1]:+.0f}]" if s else ""
        lines.append(f"| {r['align']} | {r['finetune']} | {p} | {r['positive_heads']}{ci} | {r['total_heads']} | {delta} | {share} | {vs_sft} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--markdown", action="store_true")
    return parser.parse_args(argv)


def found_rows(args: argparse.Namespace) -> list[dict]:
    """:func:`rows` of the folder, or a refusal (``SystemExit``, the reason) when it has no finished sink stage."""
    found = rows(args.folder, args.n_boot)
    if not found:
        raise SystemExit(f"no finished sink stage in {args.folder}")
    return found


def table_markdown(argv: list[str]) -> str:
    """The table for a results page marker (benchmarks/results_page.py); writes no JSON."""
    return markdown(found_rows(parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    from _common import one_line_errors

    args = parse_args(argv)
    with one_line_errors("sink_trend"):  # "sink_trend: error: no finished sink stage in ...", exit 2
        found = found_rows(args)
    result = {"folder": str(args.folder), "n_boot": args.n_boot, "rows": found,
              "machine": {"platform": platform.platform(), "python": platform.python_version()}}
    out = ROOT / "benchmarks" / "results" / f"sink_trend-{args.folder.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(found) if args.markdown else json.dumps(found, indent=1))
    print(f"written: {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
