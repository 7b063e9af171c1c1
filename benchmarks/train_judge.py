"""Train the ``harm-ce`` cross-encoder judge and write the weights clinic ships.

    CLINIC_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 \\
        python benchmarks/train_judge.py --out src/clinic/evaluation/judges/weights/harm-ce

Seeded. Prints the sha256 of every data file it reads and the rows per source, estimates the
training time from a few timed steps (``--estimate-only`` stops there), trains, scores the
held-out half of BeaverTails 30k_test (never trained on) and records everything (data hashes,
rows, config, held-out metrics with a 95 % Wilson interval for accuracy, scoring speed) in
``<out>/harm_ce.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info
from judge_accuracy import evaluate

from clinic.evaluation.judges.harm_ce import (
    DEFAULT_CAPS,
    DEFAULT_SAFE_REPEATS,
    HARM_CE_SOURCES,
    META_FILE,
    WEIGHTS_DIR,
    HarmCEJudge,
    data_hashes,
    file_sha256,
    harm_ce_training_rows,
    train_harm_ce,
)
from clinic.evaluation.judges.classifier import heldout_rows


HERE = Path(__file__).resolve().parent


#: Prompt sets a judge can be trained without (``--leave-out``), and the training source that holds
#: answers to that set's own prompts.
LEAVE_OUT = {"advbench": None, "strongreject": None, "do-not-answer": "do-not-answer-safe"}


def left_out_prompts(name: str) -> set[str]:
    """Every prompt of the set ``name``, normalised: no training row may hold one."""
    from clinic.data.sources import load_rows

    return {r["prompt"].strip().lower() for r in load_rows(name, kind="prompts")}


def read_label_rows(path: Path, leave_out: str | None = None) -> list[dict]:
    """Training rows from a read-labels file: harmful -> unsafe, not_harmful -> safe; undecided
    and held-out prompts dropped (the held-out metric must stay untouched); with ``leave_out``
    also every answer read on that prompt set."""
    from clinic.evaluation.coherence import is_degenerate
    from clinic.evaluation.judges.classifier import heldout_prompt

    rows = []
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row["label"] not in ("harmful", "not_harmful") or row.get("set") == leave_out:
            continue
        if row.get("set") == "beavertails-test" and heldout_prompt(row["prompt"]):
            continue
        if is_degenerate(row["response"]):
            continue
        rows.append({"prompt": row["prompt"], "response": row["response"], "is_safe": row["label"] == "not_harmful"})
    return rows


def heldout_metrics(weights_dir: Path) -> dict:
    metrics, seconds = evaluate(HarmCEJudge(weights_dir=str(weights_dir)), heldout_rows())
    return {**metrics, "score_seconds": round(seconds, 1),
            "split": "beavertails-labelled-test, prompts with sha256(prompt)[0] even"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--sources", nargs="+", default=list(HARM_CE_SOURCES), choices=list(HARM_CE_SOURCES))
    parser.add_argument("--cap", action="append", default=[], metavar="SOURCE[:harmful]=N",
                        help=f"row cap per source, or of its harmful rows (default {DEFAULT_CAPS})")
    parser.add_argument("--safe-repeats", action="append", default=[], metavar="SOURCE=K",
                        help=f"repeat a source's safe rows K times (default {DEFAULT_SAFE_REPEATS})")
    parser.add_argument("--read-labels", type=Path, action="append", default=[],
                        help="a file of answers of clinic's own models labelled by reading (rows with prompt, response, "
                             "label harmful / not_harmful / undecided; benchmarks/judge_train/); undecided rows are dropped")
    parser.add_argument("--read-repeats", type=int, default=3, help="how many times each read-label row is used")
    parser.add_argument("--leave-out", choices=list(LEAVE_OUT), default=None,
                        help="train without any answer to this prompt set's prompts (its read answers, its own "
                             "labelled source, any row whose prompt is one of its prompts): leave-one-set-out")
    parser.add_argument("--estimate-only", action="store_true", help="time a few steps and stop")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    args = parser.parse_args(argv)
    command = "python benchmarks/train_judge.py " + " ".join(argv if argv is not None else sys.argv[1:])

    caps, repeats = dict(DEFAULT_CAPS), dict(DEFAULT_SAFE_REPEATS)
    for target, items in ((caps, args.cap), (repeats, args.safe_repeats)):
        for item in items:
            name, _, value = item.partition("=")
            if name.split(":")[0] not in HARM_CE_SOURCES or not value.isdigit():
                parser.error(f"expected SOURCE=N with a source of {', '.join(HARM_CE_SOURCES)}, got {item!r}")
            target[name] = int(value)
    if args.leave_out and LEAVE_OUT[args.leave_out] in args.sources:
        args.sources = [name for name in args.sources if name != LEAVE_OUT[args.leave_out]]
    hashes = data_hashes(args.sources)
    for path, digest in hashes.items():
        print(f"data {path} sha256 {digest}")
    rows, counts = harm_ce_training_rows(args.sources, caps, args.seed, repeats)
    if args.leave_out:
        held = left_out_prompts(args.leave_out)
        before = len(rows)
        rows = [r for r in rows if r["prompt"].strip().lower() not in held]
        print(f"leave out {args.leave_out}: {before - len(rows)} rows with one of its {len(held)} prompts dropped")
    for name, c in counts.items():
        print(f"source {name}: {c['rows']} rows ({c['safe']} safe, {c['harmful']} harmful)")
    read_meta = []
    for path in args.read_labels:
        read = read_label_rows(path, args.leave_out)
        rows.extend(read * args.read_repeats)
        safe = sum(r["is_safe"] for r in read)
        read_meta.append({"file": str(path.resolve().relative_to(HERE.parent)), "sha256": file_sha256(path),
                          "rows": len(read), "safe": safe, "harmful": len(read) - safe, "repeats": args.read_repeats,
                          "label_rule": "read by the gold set's rubric (docs/judges.md); undecided dropped"})
        print(f"read labels {path}: {len(read)} rows ({safe} safe) x {args.read_repeats}")
    n_harmful = sum(not r["is_safe"] for r in rows)
    print(f"total {len(rows)} rows ({n_harmful} harmful, {len(rows) - n_harmful} safe)", flush=True)

    options = dict(seed=args.seed, max_length=args.max_length, batch_size=args.batch_size, lr=args.lr,
                   r=args.r, alpha=args.alpha)
    with tempfile.TemporaryDirectory() as tmp:
        steps = 6
        start = time.perf_counter()
        train_harm_ce(rows, tmp, max_steps=steps, log_steps=1000, **options)
        per_step = (time.perf_counter() - start) / steps
    total_steps = int(len(rows) * args.epochs / args.batch_size + 0.999)
    print(f"estimate: {per_step:.2f} s/step (incl. setup) x {total_steps} steps = "
          f"{per_step * total_steps / 60:.0f} min", flush=True)
    if args.estimate_only:
        return {"seconds_per_step": per_step, "steps": total_steps}

    # Written beside the target and moved into place at the end, so that a failed or killed run
    # leaves the previous weights (e.g. the shipped ones) as they were.
    out = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(out, ignore_errors=True)
    meta = {"sources": {name: {"files": list(HARM_CE_SOURCES[name][0]), "label_rule": HARM_CE_SOURCES[name][1],
                               **counts[name], "cap": caps.get(name), "cap_harmful": caps.get(f"{name}:harmful"),
                               "safe_repeats": repeats.get(name, 1)} for name in args.sources},
            "data_sha256": hashes, "command": command}
    if read_meta:
        meta["read_labels"] = read_meta
    if args.leave_out:
        meta["left_out"] = args.leave_out
    train_harm_ce(rows, out, epochs=args.epochs, meta=meta, **options)
    shutil.rmtree(out / "trainer", ignore_errors=True)  # the Trainer's scratch folder is not shipped
    if not args.no_eval:
        metrics = heldout_metrics(out)
        meta_path = out / META_FILE
        saved = json.loads(meta_path.read_text())
        saved["heldout_metrics"] = metrics
        saved["machine"] = machine_info("cpu")
        meta_path.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
        print(json.dumps(metrics, indent=1))
    shutil.rmtree(args.out, ignore_errors=True)
    out = out.rename(args.out)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out} ({size / 2**20:.2f} MiB)")
    return json.loads((out / META_FILE).read_text())


if __name__ == "__main__":
    main()
