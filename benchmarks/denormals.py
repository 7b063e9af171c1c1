"""Training step time with subnormal floats flushed to zero (clinic's default) or not.

    CLINIC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/denormals.py --threads 2

A softmax over SmolLM2's 49,152 tokens leaves probabilities below float32's smallest normal number
(1.2e-38) wherever the logits spread over more than 87 nats, and the backward's matrix products
that read them run far slower on x86 (a microcode assist per subnormal operand). RepNoise's logit
lens (30 hidden states projected onto the vocabulary) is hit hardest. This runs the same short
``clinic align`` (the ``protocol-align`` preset: batch 8 x 128 tokens, LoRA; 64 refusals + 32
Alpaca rows) per method with ``CLINIC_FLUSH_DENORMAL=0`` and ``=1``, alternating, each in a fresh
process with ``--threads`` torch threads, and records the seconds per step (``train_seconds /
steps``: the first step's warm-up is in both alike), their ratio, each run's training loss, and how
far the trained adapters differ (the largest absolute difference of any weight, and the norm of
the difference relative to the adapter's). With one thread the adapters should be bit-identical
(the flag moves values below 1e-38 only); with two, OpenMP's reductions need not add in the same
order twice, so ``--repeats 2`` also compares two runs of one setting. Nothing else should run
meanwhile. Prints a summary and writes ``benchmarks/results/denormals.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from _common import clinic_align, machine_info, one_line_errors, save_json

RESULTS = Path(__file__).resolve().parent / "results" / "denormals.json"
SETTINGS = ("off", "on")  # CLINIC_FLUSH_DENORMAL=0 / 1


def adapter_difference(a: Path, b: Path) -> dict:
    """The largest absolute difference between two adapters' weights and ||a - b|| / ||a||."""
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a / "adapter" / "adapter_model.safetensors"), load_file(b / "adapter" / "adapter_model.safetensors")
    if wa.keys() != wb.keys():
        raise SystemExit(f"adapters {a} and {b} hold different tensors")
    diff = torch.cat([(wa[k] - wb[k]).flatten() for k in wa])
    ref = torch.cat([wa[k].flatten() for k in wa])
    return {"max_abs": float(diff.abs().max()), "relative_norm": float(diff.norm() / ref.norm()),
            "bit_identical": bool((diff == 0).all())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--methods", nargs="+", default=["sft", "repnoise"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per method and setting, alternating")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.steps, args.threads, args.repeats) < 1:
        parser.error("--steps, --threads and --repeats must be at least 1")

    load_before = os.getloadavg()[0]
    methods: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="clinic-denormals-") as tmp:
        for method in args.methods:
            runs = []
            for i in range(args.repeats):
                for setting in SETTINGS:
                    out = Path(tmp) / f"{method}-{setting}-{i}"
                    metrics = clinic_align(
                        ["--model", args.model, "--method", method, "--preset", "protocol-align", "--source", "refusals",
                         "--n", "64", "--helpful", "alpaca", "--helpful-n", "32", "--max-steps", str(args.steps)],
                        out, {"OMP_NUM_THREADS": str(args.threads), "CLINIC_FLUSH_DENORMAL": "1" if setting == "on" else "0"},
                        f"clinic align --method {method} (flush {setting})")
                    run = {"flush": setting, "seconds_per_step": metrics["train_seconds"] / metrics["steps"],
                           "steps": metrics["steps"], "train_loss": metrics["train_loss"], "dir": out}
                    runs.append(run)
                    print(f"{method}, flush {setting}, run {i + 1}: {run['seconds_per_step']:.2f} s/step, "
                          f"loss {run['train_loss']:.5f}", flush=True)
            first = {s: next(r for r in runs if r["flush"] == s) for s in SETTINGS}
            per = {s: statistics.median(r["seconds_per_step"] for r in runs if r["flush"] == s) for s in SETTINGS}
            record = {"seconds_per_step": {s: round(v, 3) for s, v in per.items()},
                      "speedup_flush": round(per["off"] / per["on"], 3),
                      "adapter_on_vs_off": adapter_difference(first["off"]["dir"], first["on"]["dir"])}
            if args.repeats > 1:
                second_off = [r for r in runs if r["flush"] == "off"][1]
                record["adapter_off_vs_off"] = adapter_difference(first["off"]["dir"], second_off["dir"])
            record["runs"] = [{k: v for k, v in r.items() if k != "dir"} for r in runs]
            methods[method] = record
    result = {
        "what": f"clinic align --preset protocol-align --model {args.model}, {args.steps} steps on 64 refusals + "
                f"32 Alpaca rows, {args.threads} torch thread(s), CLINIC_FLUSH_DENORMAL=0 vs 1",
        "command": "python benchmarks/denormals.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "methods": methods,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "machine": machine_info("cpu", torch_threads=args.threads),
    }
    save_json(result, args.out)
    for method, record in methods.items():
        d = record["adapter_on_vs_off"]
        print(f"{method}: {record['seconds_per_step']['off']:.2f} s/step unflushed, {record['seconds_per_step']['on']:.2f} "
              f"flushed ({record['speedup_flush']:.2f}x); adapters {'bit-identical' if d['bit_identical'] else 'differ'}"
              f" (max |diff| {d['max_abs']:.2e}, relative {d['relative_norm']:.2e})")
    return result


if __name__ == "__main__":
    with one_line_errors("denormals.py"):
        main()
