"""Judge saved generations again with another judge: no training, no generation.

    CLINIC_DATA_DIR=../shared/data python benchmarks/rejudge.py results/calib-a --judges harm-ce

Every finished evaluate stage of the folder (an experiment folder's: the evaluate stages of its
``plan.json``, in its store, shared with other folders or not; any other folder's:
``<folder>/store/*/`` and ``<folder>/*/``;
a ``DONE`` marker and a ``generations.jsonl``) gets, for each named judge: its flag on every
harmful-prompt row of ``generations.jsonl`` (``flagged[judge]``) and its probability
(``scores[judge]``), and its harmful score per prompt set in ``metrics.json``
(``harmful[set][judge]``: ``scoring.HARMFUL_METRICS``, the counted and the graded score, as
``clinic evaluate`` writes them), so that ``clinic report`` shows the new judge with its intervals
and paired comparisons. ``metrics.json`` records what was added under
``rejudged`` (judge, its ``describe()``, the date). A judge already present (flags and scores) is
left alone unless ``--force``; one with flags but no scores (evaluations before 2026-12-06) is
scored again, which adds its scores and graded score. Each file is replaced atomically (written
beside it, then renamed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from clinic.evaluation.judges import get_judge
from clinic.evaluation.scoring import HARMFUL_METRICS, SCORE_DECIMALS, harmful_score
from clinic.rundir import jsonl_file, load_plan, read_jsonl, write_jsonl_atomic


def evaluate_stages(folder: Path) -> list[Path]:
    if (folder / "plan.json").exists():  # only this experiment's stages: its store may be shared
        plan, store = load_plan(folder)
        candidates = [store / s["dir"] for s in plan["stages"] if s["kind"] == "evaluate"]
    else:  # a store, or a folder holding one
        candidates = sorted(folder.glob("store/*/")) + sorted(folder.glob("*/"))
    return [d for d in candidates if (d / "DONE").exists() and jsonl_file(d, "generations.jsonl") is not None
            and (d / "metrics.json").exists()]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.rejudge-tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rejudge(stage: Path, judges: dict, force: bool = False) -> list[str]:
    """Add each judge's flags and scores to one evaluate stage; returns the judges added."""
    generations = jsonl_file(stage, "generations.jsonl")
    records = read_jsonl(generations)
    metrics = json.loads((stage / "metrics.json").read_text())
    harmful = [r for r in records if "flagged" in r]
    added = []
    for name, judge in judges.items():
        # present: flagged and scored (evaluations before 2026-12-06 kept flags only; their scores are added)
        if not force and any(name in r["flagged"] and name in r.get("scores", {}) for r in harmful):
            continue
        by_set: dict[str, list[dict]] = {}
        for r in harmful:
            by_set.setdefault(r["set"], []).append(r)
        for prompt_set, rows in by_set.items():
            result = harmful_score(judge, [r["prompt"] for r in rows], [r["response"] for r in rows])
            for r, flag, value in zip(rows, result["flags"], result["scores"]):
                r["flagged"][name] = flag
                r.setdefault("scores", {})[name] = round(value, SCORE_DECIMALS)
            metrics.setdefault("harmful", {}).setdefault(prompt_set, {})[name] = {
                k: result[k] for k in HARMFUL_METRICS}
        metrics.setdefault("rejudged", {})[name] = {"judge": judge.describe(),
                                                    "date": datetime.date.today().isoformat()}
        added.append(name)
    if added:
        write_jsonl_atomic(generations, records)
        _write_atomic(stage / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an experiment results folder or a folder of evaluate runs")
    parser.add_argument("--judges", default="harm-ce", help="comma-separated judge names")
    parser.add_argument("--force", action="store_true", help="judge again where the judge is already present")
    args = parser.parse_args(argv)
    stages = evaluate_stages(args.folder)
    if not stages:
        print(f"rejudge: error: no finished evaluate stage under {args.folder}", file=sys.stderr)
        return 2
    judges = {name.strip(): get_judge(name.strip()) for name in args.judges.split(",") if name.strip()}
    for stage in stages:
        added = rejudge(stage, judges, args.force)
        print(f"{stage.name}: {'added ' + ', '.join(added) if added else 'nothing to add'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
