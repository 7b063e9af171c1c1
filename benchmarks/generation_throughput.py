"""Throughput of clinic.evaluation.generate: one prompt at a time versus left-padded batches.

    CLINIC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 python benchmarks/generation_throughput.py

SmolLM2-135M-Instruct (alias ``smollm2-135m-instruct``), the first 64 prompts of the
``beavertails-test`` source in the chat format, 64 new tokens, greedy. Prints a table and
writes ``benchmarks/results/generation_throughput.json`` (timings, speed-ups, whether every
batch size returned exactly the one-at-a-time answers, and machine information).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from _common import machine_info, save_json

from clinic.data.formatting import PromptFormat, encode_prompts, format_prompt
from clinic.data.sources import load_rows
from clinic.evaluation.generate import generate, shared_prefix_length
from clinic.modeling.models import load_model

RESULTS = Path(__file__).resolve().parent / "results" / "generation_throughput.json"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--source", default="beavertails-test")
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64],
                        help="batched runs, with the shared prompt prefix computed once (clinic's default)")
    parser.add_argument("--unshared-batch-sizes", type=int, nargs="*", default=[32],
                        help="batched runs without prefix sharing, to show what it adds")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    fmt = PromptFormat("chat")
    rows = load_rows(args.source)[: args.n_prompts]
    ids = encode_prompts(tok, fmt, [format_prompt(tok, fmt, r["prompt"]) for r in rows])

    # Warm-up (first calls allocate and pick kernels).
    generate(model, tok, ids[:2], batch_size=2, max_new_tokens=4, progress=False)

    runs = []
    reference = None
    # The baseline is one prompt at a time with nothing shared: what a plain loop does.
    plan = [(1, False), *[(b, False) for b in args.unshared_batch_sizes], *[(b, True) for b in args.batch_sizes]]
    for batch_size, share in plan:
        load_before = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), time.process_time()
        outputs = generate(model, tok, ids, batch_size=batch_size, max_new_tokens=args.max_new_tokens,
                           progress=False, share_prefix=share)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        new_tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in outputs)
        if reference is None:
            reference = outputs
        runs.append({
            "batch_size": batch_size,
            "share_prefix": share,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "prompts_per_s": round(len(ids) / seconds, 3),
            "new_tokens_per_s": round(new_tokens / seconds, 1),
            "same_as_one_at_a_time": outputs == reference,
            "n_different": sum(a != b for a, b in zip(outputs, reference)),
        })
        print(f"batch {batch_size:>3}{' shared' if share else '       '}: {seconds:7.1f} s wall, {cpu_seconds:7.1f} s CPU, "
              f"load {load_before:.1f}", file=sys.stderr, flush=True)
    base = runs[0]["seconds"]
    base_cpu = runs[0]["cpu_seconds"]
    for run in runs:
        run["speedup"] = round(base / run["seconds"], 2)
        run["cpu_speedup"] = round(base_cpu / run["cpu_seconds"], 2)
    best = max(runs[1:], key=lambda r: r["speedup"]) if len(runs) > 1 else runs[0]

    result = {
        "model": args.model,
        "source": args.source,
        "n_prompts": len(ids),
        "prompt_tokens": {"min": min(map(len, ids)), "max": max(map(len, ids)),
                          "mean": round(sum(map(len, ids)) / len(ids), 1)},
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy (do_sample=False, num_beams=1), left padding, prompts sorted by length; "
                    "share_prefix: the prompts' common opening run once and copied into each batch's cache",
        "shared_prefix_tokens": shared_prefix_length(model, ids, args.max_new_tokens),
        "runs": runs,
        "best_batch_size": best["batch_size"],
        "best_share_prefix": best["share_prefix"],
        "best_speedup": best["speedup"],
        "machine": machine_info(str(next(model.parameters()).device), dtype=str(next(model.parameters()).dtype),
                                attn_implementation=getattr(model.config, "_attn_implementation", None)),
        "note": "wall-clock speed-up is the headline; CPU seconds (process time) and the 1-minute load "
                "average before/after each run show whether other processes shared the cores",
        "command": "python benchmarks/generation_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"\n{'batch':>5} | {'shared':>6} | {'wall s':>7} | {'CPU s':>7} | {'prompts/s':>9} | {'new tok/s':>9} | "
          f"{'speed-up':>8} | {'CPU speed-up':>12} | same answers")
    print("-" * 101)
    for run in runs:
        print(f"{run['batch_size']:>5} | {'yes' if run['share_prefix'] else 'no':>6} | {run['seconds']:>7.1f} | {run['cpu_seconds']:>7.1f} | "
              f"{run['prompts_per_s']:>9.2f} | {run['new_tokens_per_s']:>9.1f} | {run['speedup']:>7.2f}x | "
              f"{run['cpu_speedup']:>11.2f}x | {run['same_as_one_at_a_time']}")
    print(f"\nbest: batch {best['batch_size']} (shared prefix: {best['share_prefix']}), {best['speedup']}x; machine: {result['machine']}")
    save_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
