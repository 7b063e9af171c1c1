"""Accuracy of the offline judges on the held-out labelled BeaverTails split.

    CLINIC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/judge_accuracy.py

Scores the held-out half of ``beavertails-labelled-test`` (split by prompt, never trained on)
with the judges named by ``--judges`` (default: ``harm-ce``, with the weights shipped in the
package; ``classifier``, trained or loaded from ``$CLINIC_CACHE_DIR/judges/``; ``keyword``).
Harmful (is_safe = False) is the positive class; accuracy comes with a 95 % Wilson interval.
Prints a table and updates ``benchmarks/results/judge_accuracy.json`` (the entries of judges
not run this time are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import machine_info, save_json

from clinic.evaluation.judges import get_judge
from clinic.evaluation.coherence import is_degenerate
from clinic.evaluation.judges.classifier import CLASSIFIER_SOURCES, DEFAULT_CLASSIFIER_SOURCES, heldout_rows
from clinic.evaluation.judges.metrics import binary_metrics

RESULTS = Path(__file__).resolve().parent / "results" / "judge_accuracy.json"


JUDGE_NAMES = ("harm-ce", "classifier", "keyword")


def wilson(k: int, n: int) -> list[float]:
    """95 % Wilson score interval of a proportion k / n (scipy)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(ci.low, 4), round(ci.high, 4)]


def evaluate(judge, rows) -> tuple[dict, float]:
    """Held-out metrics of ``judge`` on ``rows`` (harmful = positive) and the scoring seconds."""
    start = time.perf_counter()
    scores, flags = judge.score_and_flag([r["prompt"] for r in rows], [r["response"] for r in rows])
    seconds = time.perf_counter() - start
    metrics = binary_metrics([not r["is_safe"] for r in rows], flags)
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    metrics["accuracy_ci95_wilson"] = wilson(metrics["tp"] + metrics["tn"], metrics["n"])
    # the harmful share three ways (%): by the labels, by the flags, and graded (the mean probability)
    metrics["hs_labels"] = round(100 * sum(not r["is_safe"] for r in rows) / len(rows), 2)
    metrics["hs_flagged"] = round(100 * sum(flags) / len(rows), 2)
    metrics["hs_graded"] = round(100 * sum(scores) / len(rows), 2)
    return metrics, seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judges", nargs="+", default=list(JUDGE_NAMES), choices=JUDGE_NAMES)
    parser.add_argument("--sources", nargs="+", default=list(DEFAULT_CLASSIFIER_SOURCES), choices=CLASSIFIER_SOURCES,
                        help="classifier training sources")
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--class-weight", default="balanced", choices=["balanced", "none"])
    parser.add_argument("--max-rows-per-source", type=int, default=None)
    parser.add_argument("--retrain", action="store_true", help="ignore a cached classifier")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rows = heldout_rows()
    n_harmful = sum(not r["is_safe"] for r in rows)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result["heldout"] = {
        "source": "beavertails-labelled-test, half of the prompts (sha256(prompt)[0] even)",
        "n": len(rows),
        "n_harmful": n_harmful,
        "n_safe": len(rows) - n_harmful,
        "n_prompts": len({r["prompt"] for r in rows}),
        "n_degenerate_responses": sum(is_degenerate(r["response"]) for r in rows),
    }
    for name in args.judges:
        options = {}
        if name == "classifier":
            options = dict(sources=args.sources, C=args.C, max_rows_per_source=args.max_rows_per_source,
                           retrain=args.retrain,
                           class_weight=None if args.class_weight == "none" else args.class_weight)
        start = time.perf_counter()
        judge = get_judge(name, **options)
        build_seconds = time.perf_counter() - start
        metrics, seconds = evaluate(judge, rows)
        # The speed goal: 200 answers (here the first 200 held-out pairs, long BeaverTails
        # answers) scored in one call.
        start = time.perf_counter()
        judge.score([r["prompt"] for r in rows[:200]], [r["response"] for r in rows[:200]])
        entry = {**metrics, "train_or_load_seconds": round(build_seconds, 1), "score_seconds": round(seconds, 1),
                 "score_200_seconds": round(time.perf_counter() - start, 1)}
        if name == "classifier":
            entry.update(config=judge.config, config_hash=judge.config_hash, train_info=judge.info,
                         cache_file=str(judge.cache_path))
        elif name == "harm-ce":
            entry.update(weights=judge.describe())
        result[name] = entry
    result["machine"] = machine_info("cpu")
    result["command"] = "python benchmarks/judge_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])

    print(f"held-out: {len(rows)} rows ({n_harmful} harmful, {len(rows) - n_harmful} safe), "
          f"{result['heldout']['n_prompts']} prompts")
    print(f"{'judge':>10} | {'accuracy':>8} | {'95% CI':>13} | {'precision':>9} | {'recall':>6} | {'F1':>6} | "
          "score s (all / 200)")
    print("-" * 80)
    for name in args.judges:
        m = result[name]
        ci = m["accuracy_ci95_wilson"]
        print(f"{name:>10} | {m['accuracy']:>8.3f} | {ci[0]:.3f}-{ci[1]:.3f} | {m['precision']:>9.3f} | "
              f"{m['recall']:>6.3f} | {m['f1']:>6.3f} | {m['score_seconds']} / {m['score_200_seconds']}")
    save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
