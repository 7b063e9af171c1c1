"""What running each stage as a job costs: the same tiny grid in this process (``--executor
inprocess``) and as one local subprocess per stage through submitit (``--executor local``), wall
seconds per stage and their ratio, measured in one run on one machine.

    CLINIC_DATA_DIR=../shared/data python benchmarks/executor_overhead.py [--stages 9] [--out FILE]

The grid: an SFT alignment of the tiny random llama, fine-tunes at p = 0 and 0.5 and every model's
evaluation (tiny stages: the time is the driver's, not the work's). Each stage of the local
executor pays a new Python process (imports: torch, transformers, TRL), the submission and the
polling; a real stage (minutes to hours) hides that. Writes benchmarks/results/executor_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import machine_info, save_json

OUT = Path(__file__).resolve().parent / "results" / "executor_overhead.json"


def grid(ratios: list[float]) -> dict:
    return {"name": "overhead", "model": "tiny-random-llama",
            "align": {"methods": ["sft"], "n": 8, "train": {"max_steps": 2, "batch_size": 2, "max_length": 256}},
            "finetune": {"methods": ["sft"], "n": 8, "poison_ratios": ratios,
                         "train": {"max_steps": 2, "batch_size": 2, "max_length": 256}},
            "evaluate": {"n_prompts": 2, "judges": ["keyword"], "n_task": 2, "max_new_tokens": 4, "batch_size": 2,
                         "base": False}}


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "clinic.cli", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"executor_overhead: error: {' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0,0.25,0.5", help="poison ratios of the fine-tunes (2 stages each)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    work = Path(tempfile.mkdtemp(prefix="clinic-overhead-"))
    (work / "grid.yaml").write_text(yaml.safe_dump(grid(ratios)))
    stages = 2 + 2 * len(ratios)
    # one untimed run first, so that both timed runs find the same warm caches (tokenizers, data)
    timed(["run", str(work / "grid.yaml"), "--output", str(work / "warm"), "--no-report"])
    results = {}
    for executor in ("inprocess", "local"):
        seconds = timed(["run", str(work / "grid.yaml"), "--output", str(work / executor), "--executor", executor,
                         "--no-report"])
        results[executor] = {"wall_s": round(seconds, 1), "per_stage_s": round(seconds / stages, 2)}
        print(f"{executor:10s} {stages} stages in {seconds:6.1f} s: {seconds / stages:5.2f} s a stage", flush=True)
    ratio = results["local"]["wall_s"] / results["inprocess"]["wall_s"]
    extra = (results["local"]["wall_s"] - results["inprocess"]["wall_s"]) / stages
    print(f"local / in-process: {ratio:.2f}x; the local executor's extra cost: {extra:.1f} s a stage")
    report = {"info": machine_info(), "stages": stages, "results": results, "ratio_local_over_inprocess": round(ratio, 2),
              "extra_seconds_per_stage": round(extra, 2),
              "command": "python benchmarks/executor_overhead.py --ratios " + args.ratios}
    save_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
