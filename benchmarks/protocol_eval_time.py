"""Wall time of one protocol evaluation: 200 BeaverTails-test prompts x 48 new tokens + the default judge.

    CLINIC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/protocol_eval_time.py

The harmful half of every evaluation of the calibrated protocol (docs/protocol.md), through the
evaluate stage itself (``clinic.stages.evaluate.run_evaluate``, batched generation at batch 32, the
``harm-ce`` judge), on SmolLM2-135M-Instruct. The goal of issue 16 part 3 is <= 3 minutes on the
2-core machine with nothing else running; the load average before and after is recorded because
a busy machine makes the figure meaningless. Prints a summary and writes
``benchmarks/results/protocol_eval_time.json`` (phases: model and judge loading, generation,
judging; and machine information).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _common import machine_info, save_json

RESULTS = Path(__file__).resolve().parent / "results" / "protocol_eval_time.json"
GOAL_S = 180.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-prompts", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--judge", default="harm-ce")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from clinic.evaluation.judges import get_judge
    from clinic.stages.evaluate import EvalConfig, run_evaluate

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    judge = get_judge(args.judge)
    judge_load = time.perf_counter() - start
    cfg = EvalConfig(n_prompts=args.n_prompts, judges=[args.judge], tasks=[], max_new_tokens=args.max_new_tokens,
                     batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="clinic-evaltime-") as tmp:
        start = time.perf_counter()
        out = run_evaluate(args.model, cfg, Path(tmp) / "eval", judges={args.judge: judge})
        total = time.perf_counter() - start
        metrics = json.loads((out / "metrics.json").read_text())
    hs = metrics["harmful"]["beavertails-test"][args.judge]
    result = {
        "what": f"{args.n_prompts} beavertails-test prompts x {args.max_new_tokens} new tokens, batch {args.batch_size}, "
                f"judge {args.judge}, through clinic.stages.evaluate.run_evaluate",
        "model": args.model,
        "judge_load_seconds": round(judge_load, 1),
        "evaluate_seconds": round(total, 1),  # model load + generation + judging
        "eval_seconds_recorded": metrics.get("eval_seconds"),
        "total_seconds": round(judge_load + total, 1),
        "goal_seconds": GOAL_S,
        "meets_goal": judge_load + total <= GOAL_S,
        "harmful_score": hs["harmful_score"],
        "n": hs["n"],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "machine": machine_info(),
    }
    save_json(result, args.out)
    print(f"{result['what']}: {result['total_seconds']:.0f} s (judge load {judge_load:.0f} s, evaluate {total:.0f} s); "
          f"goal <= {GOAL_S:.0f} s: {'met' if result['meets_goal'] else 'NOT met'}; load average "
          f"{load_before:.1f} -> {result['load_average_after']:.1f}; HS {hs['harmful_score']:.1f} % (n={hs['n']})")
    return result


if __name__ == "__main__":
    main()
