"""Training step time on a CPU in fp32 and under bf16 autocast (``--bf16``), through ``clinic align``.

    CLINIC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/cpu_bf16.py --threads 2

CPUs with AMX or AVX-512-BF16 run bf16 matrix products natively, so ``--bf16`` (mixed precision:
fp32 weights, bf16 autocast) may pay off on a CPU too, not only on a GPU. This runs the same short
alignment, the ``protocol-align`` preset (batch 8 x 128 tokens, LoRA) on SmolLM2-135M-Instruct by
default, once per precision and ``--repeats`` times alternating (fp32, bf16, fp32, bf16, ...) so a
drift of the machine's load falls on both, each in a fresh ``clinic align`` process with
``--threads`` torch threads. It records the seconds per step (``train_seconds / steps`` of each
run's metrics.json: the first step's warm-up is in both alike), their ratio, the training loss of
each run (how far bf16's rounding, 8 bits of mantissa, moves it), the CPU's bf16 flags, and the
load average. Nothing else should run meanwhile. Prints a summary and writes ``benchmarks/results/cpu_bf16.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _common import clinic_align, cpuinfo, machine_info, one_line_errors, save_json

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_bf16.json"
PRECISIONS = ("fp32", "bf16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> list[str]:
    """The CPU's bf16-related flags from /proc/cpuinfo (empty where there is none, or no such file)."""
    return sorted(set((cpuinfo("flags") or "").split()) & set(BF16_FLAGS))


def align_once(args, precision: str, out: Path) -> dict:
    """One ``clinic align`` run; its seconds per step and training loss."""
    metrics = clinic_align(["--model", args.model, "--method", args.method, "--preset", args.preset,
                            "--source", args.source, "--n", str(args.n), "--max-steps", str(args.steps),
                            "--bf16", "true" if precision == "bf16" else "false"],
                           out, {"OMP_NUM_THREADS": str(args.threads)}, f"clinic align ({precision})")
    return {"precision": precision, "seconds_per_step": metrics["train_seconds"] / metrics["steps"],
            "steps": metrics["steps"], "train_loss": metrics["train_loss"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--method", default="sft")
    parser.add_argument("--preset", default="protocol-align")
    parser.add_argument("--source", default="refusals")
    parser.add_argument("--n", type=int, default=64, help="alignment rows (64 = 8 batches of the preset's 8)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs per precision, alternating")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.n, args.steps, args.threads, args.repeats) < 1:
        parser.error("--n, --steps, --threads and --repeats must be at least 1")

    load_before = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory(prefix="clinic-bf16-") as tmp:
        for i in range(args.repeats):
            for precision in PRECISIONS:
                run = align_once(args, precision, Path(tmp) / f"{precision}-{i}")
                runs.append(run)
                print(f"{precision} run {i + 1}: {run['seconds_per_step']:.2f} s/step, loss {run['train_loss']:.4f}",
                      flush=True)
    per = {p: statistics.median(r["seconds_per_step"] for r in runs if r["precision"] == p) for p in PRECISIONS}
    loss = {p: statistics.median(r["train_loss"] for r in runs if r["precision"] == p) for p in PRECISIONS}
    result = {
        "what": f"clinic align --method {args.method} --preset {args.preset} --model {args.model}, {args.steps} steps "
                f"on {args.n} {args.source} rows, {args.threads} torch threads, fp32 vs --bf16",
        "command": "python benchmarks/cpu_bf16.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu_bf16_flags": cpu_flags(),
        "seconds_per_step": {p: round(v, 3) for p, v in per.items()},
        "speedup_bf16": round(per["fp32"] / per["bf16"], 3),
        "train_loss": {p: round(v, 5) for p, v in loss.items()},
        "loss_relative_difference": round(abs(loss["bf16"] - loss["fp32"]) / loss["fp32"], 5),
        "runs": runs,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "machine": machine_info("cpu", torch_threads=args.threads),
    }
    save_json(result, args.out)
    print(f"{result['what']}: fp32 {per['fp32']:.2f} s/step, bf16 {per['bf16']:.2f} s/step, "
          f"bf16 {result['speedup_bf16']:.2f}x faster; loss fp32 {loss['fp32']:.4f} vs bf16 {loss['bf16']:.4f}; "
          f"CPU flags {', '.join(result['cpu_bf16_flags']) or 'none'}; load average {load_before:.1f} -> "
          f"{result['load_average_after']:.1f}")
    return result


if __name__ == "__main__":
    with one_line_errors("cpu_bf16.py"):
        main()
