"""Training answers for the harm-ce judge from clinic's own SmolLM2 models, disjoint from the gold set.

The gold set (benchmarks/gold/) measures judges on the answers of clinic's SmolLM2 models to the
first 30 prompts of four sets. The judge's errors there are on exactly that kind of text (short
endorsements, hallucinated non-answers), which its BeaverTails training rows do not show. This
script picks prompts that no gold item, no protocol evaluation and no held-out metric uses, so
that answers to them can be read, labelled and trained on:

- BeaverTails-test prompts from index 200 on (protocol evaluations use the first 200, the gold set
  the first 30) whose prompt is NOT in the judge's held-out half (``heldout_prompt``);
- AdvBench, StrongREJECT and Do-Not-Answer prompts from index 30 on (the gold set uses the first 30).

Each model gets its own prompts (no prompt is answered twice), written as one prompts file per model:

    python benchmarks/judge_train_set.py prompts --models base,a-p0,a-p02,demo-p0,demo-p02 --out /tmp/judge-train
    clinic evaluate --model MODEL --harmful-prompts /tmp/judge-train/base.jsonl --n-prompts 80 \\
        --judges keyword --n-task 0 --output runs/judge-train/base       # one per model
    python benchmarks/gold_set.py collect --run base=runs/judge-train/base ... --per-set <file>=80 \\
        --out benchmarks/judge_train/candidates.jsonl

then readers label the candidates with the gold set's rubric (docs/judges.md) and
``train_judge.py --read-labels benchmarks/judge_train/labels.jsonl`` trains on them.

A later round (other models) must not answer a prompt an earlier round answered, nor one a test
of up to 400 rows uses: ``--exclude benchmarks/judge_train/candidates.jsonl --start
beavertails-test=400``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: (set, first index, prompts per model)
PLAN = (("beavertails-test", 200, 40), ("advbench", 30, 15), ("strongreject", 30, 15), ("do-not-answer", 30, 10))


def pick_prompts(models: list[str], starts: dict[str, int] | None = None,
                 exclude: set[str] = frozenset()) -> dict[str, list[dict]]:
    """Each model's prompts: PLAN's sets from their first usable row (``starts`` overrides PLAN's),
    skipping the prompts in ``exclude`` (an earlier round's)."""
    from clinic.data.sources import load_rows
    from clinic.evaluation.judges.classifier import heldout_prompt

    starts = starts or {}
    out: dict[str, list[dict]] = {m: [] for m in models}
    for prompt_set, start, per_model in PLAN:
        start = max(start, starts.get(prompt_set, start))
        rows = [r for r in load_rows(prompt_set, kind="prompts")[start:] if r["prompt"] not in exclude]
        if prompt_set == "beavertails-test":
            rows = [r for r in rows if not heldout_prompt(r["prompt"])]
        need = per_model * len(models)
        if len(rows) < need:
            sys.exit(f"judge_train_set: error: {prompt_set} has {len(rows)} usable prompts, {need} needed")
        for k, model in enumerate(models):
            for row in rows[k * per_model:(k + 1) * per_model]:
                out[model].append({"prompt": row["prompt"], "source_set": prompt_set})
    return out


def candidates(runs: dict[str, Path], prompts_dir: Path) -> list[dict]:
    """One row per answer (id as in gold_set.py), its prompt set taken from the prompts file."""
    from gold_set import item_id

    from clinic.rundir import jsonl_file, read_jsonl

    out = []
    for model, run in runs.items():
        sets = {r["prompt"]: r["source_set"] for r in read_jsonl(prompts_dir / f"{model}.jsonl")}
        for row in read_jsonl(jsonl_file(run, "generations.jsonl")):
            if "flagged" not in row:
                continue
            prompt_set = sets[row["prompt"]]
            out.append({"id": item_id(model, prompt_set, row["prompt"]), "model": model, "set": prompt_set,
                        "prompt": row["prompt"], "response": row["response"]})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prompts", help="one prompts file per model")
    p.add_argument("--models", required=True, help="comma-separated model names")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--start", action="append", default=[], metavar="SET=ROW",
                   help="a later first row for a set (never earlier than the plan's)")
    p.add_argument("--exclude", action="append", type=Path, default=[], metavar="JSONL",
                   help="skip the prompts of this file (an earlier round's candidates)")
    c = sub.add_parser("candidates", help="the answers of finished evaluate runs, with each prompt's set")
    c.add_argument("--run", action="append", required=True, metavar="MODEL=RUN_DIR")
    c.add_argument("--prompts", type=Path, required=True, help="the folder the prompts command wrote")
    c.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "candidates":
        runs = dict(item.split("=", 1) for item in args.run)
        rows = candidates({m: Path(r) for m, r in runs.items()}, args.prompts)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{args.out}: {len(rows)} answers")
        return
    models = [m for m in args.models.split(",") if m]
    args.out.mkdir(parents=True, exist_ok=True)
    sets = {name for name, _, _ in PLAN}
    starts = {}
    for item in args.start:
        name, _, row = item.partition("=")
        if name not in sets or not row.isdigit():
            sys.exit(f"judge_train_set: error: --start {item!r}: expected SET=ROW with SET one of {sorted(sets)}")
        starts[name] = int(row)
    from clinic.rundir import read_jsonl

    exclude = {row["prompt"] for path in args.exclude for row in read_jsonl(path)}
    for model, rows in pick_prompts(models, starts, exclude).items():
        (args.out / f"{model}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{args.out / model}.jsonl: {len(rows)} prompts")


if __name__ == "__main__":
    main()
