"""Does Pharmacist pay for itself? Selector + subset alignment against the full alignment, in one run.

    CLINIC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/pharmacist_cost.py

Issue 16, part 2: selector + subset alignment should cost <= 0.6x the full alignment for
T-Vaccine and <= 1.0x for SFT, on SmolLM2 at r = 0.4, in the calibrated protocol (cell B:
1,024 refusals + 512 Alpaca rows, preset ``protocol-align``: 2 epochs, batch 8, 128 tokens).

Running the whole thing (a full and a subset alignment per method, plus the selector on 1,024
candidates) takes hours here and, on a shared CPU, compares timings taken under different loads.
So this script measures the *parts* in one process, one after another, under the same load, and
puts them together with the protocol's step counts:

1. the Pharmacist selector (``clinic curate``) on ``--n-candidates`` candidates, once per
   ``--grad-layers`` value (0: gradients over every layer; 8: the last 8 of 30). Its metrics split
   the time into the per-sample pass (forward + backward, outer products, projection: the
   profile) and the rest (model load, the validation and harmful gradients, scoring: a fixed
   cost). The protocol's selector time is then fixed + per-candidate x 1,024;
2. ``--steps`` optimizer steps of each alignment method on the protocol's data and preset (the
   median step, the first one left out as warm-up);
3. end to end = (selector + subset steps x step) / (full steps x step), with the subset's and the
   full data's step counts (r = 0.4 of the refusals and of the Alpaca rows: 615 of 1,536 rows,
   154 of 384 steps).

The harmful score of the subset is not measured here: the experiment files
``configs/protocol-curation-{pharmacist,random}-smollm2.yaml`` do that (docs/methods/pharmacist.md).
Writes ``benchmarks/results/pharmacist_cost.json``. Smoke run on a tiny random model (a minute)::

    python benchmarks/pharmacist_cost.py --model tiny-random-llama --n-candidates 8 --steps 2 \
        --grad-layers 0 1 --max-length 512 --out /tmp/pharmacist-cost.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine_info, save_json
from transformers import TrainerCallback

RESULTS = Path(__file__).resolve().parent / "results" / "pharmacist_cost.json"
GOALS = {"sft": 1.0, "tvaccine": 0.6}  # issue 16, part 2
METHOD_OPTIONS = {"tvaccine": {"checkpoint_inactive": False}}  # as in the protocol's CPU runs


class StepTimer(TrainerCallback):
    """Wall seconds of every optimizer step."""

    def __init__(self):
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def protocol_steps(rows: int, epochs: int, batch: int) -> int:
    return math.ceil(rows / batch) * epochs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-candidates", type=int, default=64, help="candidates the selector is timed on")
    parser.add_argument("--grad-layers", type=int, nargs="+", default=[0, 8])
    parser.add_argument("--methods", nargs="+", default=["sft", "tvaccine"])
    parser.add_argument("--steps", type=int, default=8, help="alignment steps timed per method (after one warm-up)")
    parser.add_argument("--protocol-refusals", type=int, default=1024)
    parser.add_argument("--protocol-helpful", type=int, default=512)
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--preset", default="protocol-align")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per sample (default: the preset's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="run directories (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from clinic.stages.curate import CurateConfig, run_curate
    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train

    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="pharmacist-cost-"))
    overrides = {} if args.max_length is None else {"max_length": args.max_length}
    preset = train_config(args.preset, **overrides)
    full_steps = protocol_steps(args.protocol_refusals + args.protocol_helpful, preset.epochs, preset.batch_size)
    subset_rows = round(args.ratio * args.protocol_refusals) + round(args.ratio * args.protocol_helpful)
    subset_steps = protocol_steps(subset_rows, preset.epochs, preset.batch_size)

    selectors = {}
    for layers in args.grad_layers:
        cfg = CurateConfig(model=args.model, selector="pharmacist", n_candidates=args.n_candidates, ratio=args.ratio,
                           max_length=preset.max_length, lora_r=preset.lora_r, lora_alpha=preset.lora_alpha,
                           grad_layers=layers, seed=0)
        out = run_curate(cfg, work / f"curate-grad-layers-{layers}", overwrite=True, progress=False)
        m = json.loads((out / "metrics.json").read_text())
        per_candidate = m["per_sample_gradient_seconds"] / args.n_candidates
        fixed = m["selector_seconds"] - m["per_sample_gradient_seconds"]
        selectors[layers] = {
            "selector_seconds": m["selector_seconds"],
            "profile_seconds": {k.removesuffix("_seconds"): round(v, 2) for k, v in m.items()
                                if k.startswith(("per_sample_", "model_load")) and k.endswith("_seconds")},
            "fixed_seconds": round(fixed, 2),
            "per_candidate_seconds": round(per_candidate, 5),  # x 1,024 candidates: 3 digits could be 0.5 s off
            "protocol_selector_seconds": round(fixed + per_candidate * args.protocol_refusals, 1),
        }
        print(f"selector, grad layers {layers or 'all'}: {m['selector_seconds']:.1f} s on {args.n_candidates} "
              f"candidates ({per_candidate:.2f} s each + {fixed:.1f} s fixed)", file=sys.stderr, flush=True)

    steps = {}
    refusals = round(2 * (args.steps + 1) * preset.batch_size / 3)
    helpful = (args.steps + 1) * preset.batch_size - refusals
    for method in args.methods:
        timer = StepTimer()
        run_train("align", model=args.model, method=method,
                  train=train_config(args.preset, epochs=1, max_steps=args.steps + 1, logging_steps=1, **overrides),
                  data=DataConfig(source="refusals", n=refusals, helpful="alpaca", helpful_n=helpful),
                  output=work / f"align-{method}", method_options=METHOD_OPTIONS.get(method),
                  overwrite=True, callbacks=[timer])
        timed = timer.seconds[1:]
        steps[method] = {"step_seconds": round(statistics.median(timed), 2), "steps_timed": len(timed),
                         "all_step_seconds": [round(s, 2) for s in timer.seconds]}
        print(f"{method}: {statistics.median(timed):.2f} s per step (median of {len(timed)})",
              file=sys.stderr, flush=True)

    rows = []
    for method, st in steps.items():
        step = st["step_seconds"]
        full = full_steps * step
        for layers, sel in selectors.items():
            total = sel["protocol_selector_seconds"] + subset_steps * step
            rows.append({"method": method, "grad_layers": layers, "selector_s": sel["protocol_selector_seconds"],
                         "subset_alignment_s": round(subset_steps * step, 1), "full_alignment_s": round(full, 1),
                         "end_to_end_ratio": round(total / full, 3), "goal": GOALS.get(method),
                         "meets_goal": None if method not in GOALS else total / full <= GOALS[method]})
    result = {
        "model": args.model,
        "preset": args.preset,
        "protocol": {"refusals": args.protocol_refusals, "helpful": args.protocol_helpful, "ratio": args.ratio,
                     "subset_rows": subset_rows, "full_steps": full_steps, "subset_steps": subset_steps},
        "n_candidates_timed": args.n_candidates,
        "selectors": {str(k): v for k, v in selectors.items()},
        "alignment_steps": steps,
        "end_to_end": rows,
        "machine": machine_info("cpu"),
        "command": "python benchmarks/pharmacist_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "note": "selector time extrapolated linearly in candidates from the timed ones (the per-sample pass), plus "
                "its fixed part; alignment time = protocol step count x the median measured step",
    }
    print(f"\n{'method':>9} | {'grad layers':>11} | {'selector s':>10} | {'subset align s':>14} | "
          f"{'full align s':>12} | {'end to end':>10} | goal")
    print("-" * 90)
    for r in rows:
        goal = "" if r["goal"] is None else f"<= {r['goal']}: {'met' if r['meets_goal'] else 'NOT met'}"
        print(f"{r['method']:>9} | {r['grad_layers'] or 'all':>11} | {r['selector_s']:>10.0f} | "
              f"{r['subset_alignment_s']:>14.0f} | {r['full_alignment_s']:>12.0f} | {r['end_to_end_ratio']:>9.2f}x | {goal}")
    save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
