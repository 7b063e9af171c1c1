"""Accuracy of the offline judges on the held-out labelled BeaverTails split.

    CLINIC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/judge_accuracy.py

Trains the ``classifier`` judge (or loads it from ``$CLINIC_CACHE_DIR/judges/``), then scores
the held-out half of ``beavertails-labelled-test`` (split by prompt, never trained on) with it
and with the ``keyword`` judge. Harmful (is_safe = False) is the positive class. Prints a table
and writes ``benchmarks/results/judge_accuracy.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import machine_info, save_json

from clinic.evaluation.judges import (
    CLASSIFIER_SOURCES,
    DEFAULT_CLASSIFIER_SOURCES,
    binary_metrics,
    get_judge,
    heldout_rows,
    is_degenerate,
)

RESULTS = Path(__file__).resolve().parent / "results" / "judge_accuracy.json"


def evaluate(judge, rows) -> tuple[dict, float]:
    start = time.perf_counter()
    flags = judge.flags([r["prompt"] for r in rows], [r["response"] for r in rows])
    seconds = time.perf_counter() - start
    metrics = binary_metrics([not r["is_safe"] for r in rows], flags)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", default=list(DEFAULT_CLASSIFIER_SOURCES), choices=CLASSIFIER_SOURCES)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--class-weight", default="balanced", choices=["balanced", "none"])
    parser.add_argument("--max-rows-per-source", type=int, default=None)
    parser.add_argument("--retrain", action="store_true", help="ignore a cached classifier")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    options = dict(sources=args.sources, C=args.C, max_rows_per_source=args.max_rows_per_source,
                   class_weight=None if args.class_weight == "none" else args.class_weight)
    start = time.perf_counter()
    judge = get_judge("classifier", retrain=args.retrain, **options)
    build_seconds = time.perf_counter() - start

    rows = heldout_rows()
    n_harmful = sum(not r["is_safe"] for r in rows)
    classifier, classifier_seconds = evaluate(judge, rows)
    keyword, keyword_seconds = evaluate(get_judge("keyword"), rows)
    result = {
        "heldout": {
            "source": "beavertails-labelled-test, half of the prompts (sha256(prompt)[0] even)",
            "n": len(rows),
            "n_harmful": n_harmful,
            "n_safe": len(rows) - n_harmful,
            "n_prompts": len({r["prompt"] for r in rows}),
            "n_degenerate_responses": sum(is_degenerate(r["response"]) for r in rows),
        },
        "classifier": {
            **classifier,
            "train_or_load_seconds": round(build_seconds, 1),
            "score_seconds": round(classifier_seconds, 1),
            "config": judge.config,
            "config_hash": judge.config_hash,
            "train_info": judge.info,
            "cache_file": str(judge.cache_path),
        },
        "keyword": {**keyword, "score_seconds": round(keyword_seconds, 2)},
        "machine": machine_info("cpu"),
        "command": "python benchmarks/judge_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"held-out: {len(rows)} rows ({n_harmful} harmful, {len(rows) - n_harmful} safe), "
          f"{result['heldout']['n_prompts']} prompts")
    print(f"{'judge':>10} | {'accuracy':>8} | {'precision':>9} | {'recall':>6} | {'F1':>6}")
    print("-" * 52)
    for name, m in (("classifier", classifier), ("keyword", keyword)):
        print(f"{name:>10} | {m['accuracy']:>8.3f} | {m['precision']:>9.3f} | {m['recall']:>6.3f} | {m['f1']:>6.3f}")
    print(f"classifier trained on {judge.info} (train/load {build_seconds:.0f} s)")
    save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
