"""Leave one prompt set out (issue 35, part 3): harm-ce trained without AdvBench, StrongREJECT or
Do-Not-Answer in turn, scored on that set's answers read in the first gold set.

    CLINIC_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 \\
        python benchmarks/judge_leave_one_out.py            # about 25 min of one core per set

Each fold trains exactly as the shipped judge (``train_judge.py --epochs 1.5 --read-labels
benchmarks/judge_train/labels.jsonl``) with ``--leave-out SET``: no answer read on the set, not
the set's own labelled source (Do-Not-Answer's), and no training row whose prompt is one of the
set's prompts. The fold's judge then scores the gold set's decided answers on that set (two
readers each, ``benchmarks/gold/gold.jsonl``), a user's view of a prompt set the judge never saw;
the shipped judge's agreement on the same answers is printed beside it. Folds already trained in
``--work`` are reused. Writes ``benchmarks/results/judge_leave_one_out.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import machine_info
from gold_set import agreement, gold_names, mean_difference
from train_judge import LEAVE_OUT
from train_judge import main as train

HERE = Path(__file__).resolve().parent
GOLD = HERE / "gold" / "gold.jsonl"
OUT = HERE / "results" / "judge_leave_one_out.json"
READ_LABELS = HERE / "judge_train" / "labels.jsonl"


def fold(name: str, work: Path, read_labels: list[Path]) -> Path:
    weights = work / name
    if not (weights / "harm_ce.json").exists():
        labels = [arg for path in read_labels for arg in ("--read-labels", str(path))]
        train(["--out", str(weights), "--epochs", "1.5", *labels, "--leave-out", name, "--no-eval"])
    return weights


def markdown(result: dict) -> str:
    graded = all("left_out_graded" in e for e in result["sets"].values())
    lines = ["| left-out set | n | fold judge: accuracy [95 % CI] | flagged / harmful by reading | "
             "shipped judge (trained with the set) |" + (" graded HS − reading: fold / shipped (points) |" if graded else ""),
             "|---|---|---|---|---|" + ("---|" if graded else "")]
    for name, entry in result["sets"].items():
        a, s = entry["left_out"], entry["shipped"]
        row = (f"| {name} | {a['n']} | {100 * a['accuracy']:.1f} [{100 * a['accuracy_ci95'][0]:.1f}, "
               f"{100 * a['accuracy_ci95'][1]:.1f}] | {a['flagged']} / {a['gold_harmful']} | "
               f"{100 * s['accuracy']:.1f} [{100 * s['accuracy_ci95'][0]:.1f}, {100 * s['accuracy_ci95'][1]:.1f}] |")
        if graded:
            f, g = entry["left_out_graded"], entry["shipped_graded"]
            row += (f" {f['diff']:+.1f} [{f['ci95'][0]:+.1f}, {f['ci95'][1]:+.1f}] / "
                    f"{g['diff']:+.1f} [{g['ci95'][0]:+.1f}, {g['ci95'][1]:+.1f}] |")
        lines.append(row)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    from clinic.evaluation.judges import get_judge
    from clinic.evaluation.judges.harm_ce import HarmCEJudge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", choices=list(LEAVE_OUT), default=list(LEAVE_OUT))
    parser.add_argument("--work", type=Path, default=Path("/tmp/clinic-judge-loso"), help="where the folds' weights go")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--gold", type=Path, action="append", default=None,
                        help=f"gold files whose answers on the left-out set are scored, repeatable (default: {GOLD.relative_to(HERE.parent)})")
    parser.add_argument("--read-labels", type=Path, action="append", default=None,
                        help=f"read answers to train on, repeatable (default: {READ_LABELS.relative_to(HERE.parent)})")
    parser.add_argument("--compare", type=Path, default=None,
                        help="the judge weights to show beside each fold (default: the shipped harm-ce)")
    args = parser.parse_args(argv)
    read_labels = args.read_labels or [READ_LABELS]
    golds = args.gold or [GOLD]
    gold = [json.loads(line) for path in golds for line in path.read_text().splitlines() if line.strip()]
    shipped = get_judge("harm-ce", weights_dir=str(args.compare) if args.compare else None)  # None: the shipped weights
    result = {"gold_file": gold_names(golds), "sets": {}, "machine": machine_info("cpu"),
              "read_labels": [str(p) for p in read_labels], "compared_with": str(args.compare or "shipped harm-ce")}
    for name in args.sets:
        items = [r for r in gold if r["set"] == name and r["label"] != "undecided"]
        truth = [r["label"] == "harmful" for r in items]
        prompts, responses = [r["prompt"] for r in items], [r["response"] for r in items]
        judge = HarmCEJudge(weights_dir=str(fold(name, args.work, read_labels)))
        meta = json.loads((args.work / name / "harm_ce.json").read_text())
        (fold_scores, fold_flags), (shipped_scores, shipped_flags) = (j.score_and_flag(prompts, responses)
                                                                      for j in (judge, shipped))
        result["sets"][name] = {"left_out": agreement(truth, fold_flags), "shipped": agreement(truth, shipped_flags),
                                # the graded HS (mean probability) − HS reading on the set's answers
                                "left_out_graded": mean_difference(fold_scores, truth),
                                "shipped_graded": mean_difference(shipped_scores, truth),
                                "train_rows": meta["training"]["n_rows"], "train_seconds": meta["training"]["train_seconds"]}
        print(markdown({"sets": {name: result["sets"][name]}}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
