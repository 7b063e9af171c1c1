"""Curated alignment data vs the full data: alignment wall time, harmful score, fine-tune accuracy.

For each subset ratio r and each selector (the Pharmacist-like selector and the baselines),
``clinic curate`` picks round(r * n) of the n candidate refusals (the same candidates and the
same trusted validation split for every selector). Then, for the full candidate set and for each
subset, and for each alignment method (SFT, T-Vaccine; RepNoise with ``--align-methods``):

1. align (``run_train("align", ...)``, preset ``cpu-align``, the same epochs / batch / lr for
   every data set, so a subset of size k takes k/n of the steps);
2. harmful fine-tuning: SST2 with poison ratio p = 0.1 (preset ``cpu-finetune``);
3. evaluate: harmful score on BeaverTails test prompts with each judge (keyword, classifier) and
   SST2 accuracy.

Reported per row: the selector's wall time, the alignment wall time (``train_seconds`` of the
align run: the trainer's loop only) and its ratio to the full-data alignment of the same method,
HS per judge and FA after the attack (and before it with ``--eval-aligned``). Timings are wall
clock on whatever machine runs this; on a shared CPU they drift with the load, which is recorded.

Every stage is an ordinary run directory under ``--work``; a stage whose directory is finished
(``DONE``) is reused, so an interrupted benchmark resumes where it stopped.

Run (the real thing)::

    python benchmarks/curation.py --model smollm2-135m-instruct --ratios 0.4

Expected duration on 2 idle CPU cores with the defaults (an estimate from the demo's SmolLM2 step
times, about 0.9 s per sample for a forward + backward at 128 tokens; not measured end to end):
curation ~15 min (each gradient selector is one forward + backward pass over the candidates),
SFT alignments ~13 min, T-Vaccine alignments ~35 min (its CPU steps cost ~2.8x SFT's), 16
attacks ~33 min, 16 evaluations ~15 min: about 2 hours; ``--align-methods sft`` about 55 min;
``--ratios 0.2,0.4,0.6`` adds the curation and alignments of the extra ratios.

Smoke test on a tiny random model (a minute)::

    python benchmarks/curation.py --model tiny-random-llama --n-candidates 24 --n-validation 4 \
        --n-harmful 4 --n-finetune 16 --n-prompts 4 --n-task 4 --max-new-tokens 4 --judges keyword \
        --projection-dim 256 --work /tmp/curation-smoke --results /tmp/curation-smoke/results.json

Results: ``--results`` (JSON: machine, settings, one record per run) and the same name with
``.md`` (the table).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import machine_info, save_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SELECTORS = "pharmacist,random,highest-loss,lowest-loss,gradient-norm,less,diversity"
RESULTS = Path(__file__).resolve().parent / "results" / "curation.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias/path (tiny-random-llama for a smoke test)")
    p.add_argument("--ratios", default="0.4", help="comma-separated subset ratios, e.g. 0.2,0.4,0.6")
    p.add_argument("--selectors", default=SELECTORS, help="comma-separated selectors (the full data always runs)")
    p.add_argument("--align-methods", default="sft,tvaccine", help="comma-separated alignment methods (e.g. sft,tvaccine,repnoise)")
    p.add_argument("--n-candidates", type=int, default=240, help="candidate refusals (the full data set)")
    p.add_argument("--n-validation", type=int, default=32, help="trusted validation refusals (not candidates)")
    p.add_argument("--n-harmful", type=int, default=32, help="harmful pairs of the simulated attack (pharmacist)")
    p.add_argument("--projection-dim", type=int, default=8192, help="projected gradient dimension")
    p.add_argument("--gamma", type=float, default=None, help="pharmacist robustness weight (default: clinic's)")
    p.add_argument("--rounds", type=int, default=None, help="pharmacist weight-update rounds (default: clinic's)")
    p.add_argument("--align-epochs", type=float, default=1.0, help="alignment epochs (the same for every data set)")
    p.add_argument("--align-lr", type=float, default=5e-4, help="alignment learning rate")
    p.add_argument("--n-finetune", type=int, default=160, help="user samples of the harmful fine-tuning")
    p.add_argument("--poison-ratio", type=float, default=0.1, help="harmful fraction p of the user data")
    p.add_argument("--finetune-lr", type=float, default=2e-4, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=int, default=8, help="training batch size (both stages)")
    p.add_argument("--max-length", type=int, default=128, help="training sequence length (both stages and curation)")
    p.add_argument("--n-prompts", type=int, default=48, help="harmful prompts (beavertails-test) per evaluation")
    p.add_argument("--n-task", type=int, default=100, help="SST2 validation rows per evaluation")
    p.add_argument("--max-new-tokens", type=int, default=48, help="new tokens per harmful answer")
    p.add_argument("--judges", default="keyword,classifier", help="comma-separated judges")
    p.add_argument("--skip-full", action="store_true",
                   help="leave out the full-data pipeline (to split one benchmark across processes sharing --work; "
                        "a later run without this flag reuses their stages and writes the whole table)")
    p.add_argument("--eval-aligned", action="store_true", help="also evaluate every aligned model before the attack")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--work", default="runs/bench-curation", help="directory of the stage run directories (reused)")
    p.add_argument("--results", default=str(RESULTS), help="results JSON (the table goes beside it as .md)")
    return p.parse_args(argv)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def once(path: Path, make) -> Path:
    """Reuse a finished run directory, else (re)build it."""
    if (path / "DONE").exists():
        return path
    return make()


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from clinic.stages.curate import CurateConfig, run_curate
    from clinic.evaluation.judges import get_judge
    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train
    from clinic.stages.evaluate import EvalConfig, run_evaluate
    from clinic.rundir import read_metrics
    from clinic.report.tables import markdown_table

    work = Path(args.work).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    ratios = [float(r) for r in _split(args.ratios)]
    selectors = [s for s in _split(args.selectors) if s != "full"]
    methods = _split(args.align_methods)
    judges = _split(args.judges)
    judge_objs = {name: get_judge(name) for name in judges}
    evaluation = EvalConfig(n_prompts=args.n_prompts, judges=judges, tasks=["sst2"], n_task=args.n_task,
                            max_new_tokens=args.max_new_tokens)
    machine = machine_info()
    started = time.time()
    pharmacist_options = {k: v for k, v in (("gamma", args.gamma), ("rounds", args.rounds)) if v is not None}

    def curate(selector: str, ratio: float) -> Path:
        out = work / f"curate-{selector}-r{ratio:g}"
        # a selector's scores do not depend on r: score once, cut every other ratio from them
        scored = [work / f"curate-{selector}-r{r:g}" for r in ratios if r != ratio]
        scores_from = next((str(d) for d in scored if (d / "DONE").exists()), None)
        cfg = CurateConfig(model=args.model, selector=selector, ratio=ratio, n_candidates=args.n_candidates,
                           n_validation=args.n_validation, n_harmful=args.n_harmful, seed=args.seed,
                           batch_size=args.batch_size, max_length=args.max_length,
                           projection_dim=args.projection_dim, scores_from=scores_from,
                           **(pharmacist_options if selector == "pharmacist" else {}))
        print(f"[curate] {selector} r={ratio:g}", flush=True)
        return once(out, lambda: run_curate(cfg, out))

    common = dict(batch_size=args.batch_size, max_length=args.max_length, seed=args.seed, logging_steps=5)

    def pipeline(data_label: str, subset: Path, method: str) -> dict:
        align_dir = work / f"align-{method}-{data_label}"
        print(f"[align] {method} on {data_label}", flush=True)
        once(align_dir, lambda: run_train(
            "align", model=args.model, method=method,
            train=train_config("cpu-align", lr=args.align_lr, epochs=args.align_epochs, **common),
            data=DataConfig(source=str(subset)), output=align_dir))
        attack_dir = work / f"attack-{method}-{data_label}"
        print(f"[finetune] {method} on {data_label}", flush=True)
        once(attack_dir, lambda: run_train(
            "finetune", model=str(align_dir), method="sft",
            train=train_config("cpu-finetune", lr=args.finetune_lr, **common),
            data=DataConfig(task="sst2", n=args.n_finetune, poison_ratio=args.poison_ratio), output=attack_dir))
        record = {"align_method": method, "data": data_label, "align": read_metrics(align_dir)}
        stages = [("attacked", attack_dir)] + ([("aligned", align_dir)] if args.eval_aligned else [])
        for label, model_dir in stages:
            eval_dir = work / f"eval-{label}-{method}-{data_label}"
            print(f"[evaluate] {label} {method} on {data_label}", flush=True)
            once(eval_dir, lambda: run_evaluate(str(model_dir), evaluation, eval_dir, judges=judge_objs))
            record[f"eval_{label}"] = read_metrics(eval_dir)
        return record

    full_dir = None if args.skip_full else curate("full", 1.0)
    curated = {(s, r): curate(s, r) for r in ratios for s in selectors}
    records = []
    for method in methods:
        if full_dir is not None:
            full = pipeline("full", full_dir / "subset.jsonl", method)
            full.update(selector="full", ratio=1.0, curate=read_metrics(full_dir))
            records.append(full)
        for (selector, ratio), cdir in curated.items():
            rec = pipeline(f"{selector}-r{ratio:g}", cdir / "subset.jsonl", method)
            rec.update(selector=selector, ratio=ratio, curate=read_metrics(cdir))
            records.append(rec)
            write_results(args, machine, records, started, judges, markdown_table, echo=False)
    return write_results(args, machine, records, started, judges, markdown_table)


def selector_seconds(record: dict) -> float:
    """The selector's time (for a subset cut from another ratio's scores: that run's)."""
    if record["selector"] == "full":
        return 0.0
    info = record["curate"].get("selector_info") or {}
    source = info.get("source_selector_seconds")
    return source if source is not None else record["curate"]["selector_seconds"]


def table_rows(records: list[dict], judges: list[str], eval_aligned: bool) -> tuple[list[str], list[list]]:
    header = ["align", "selector", "ratio", "n align", "selector (s)", "align (s)", "align / full"]
    header += [f"HS {j} (%)" for j in judges] + ["FA sst2 (%)"]
    if eval_aligned:
        header += [f"HS before attack, {j} (%)" for j in judges]
    full_time = {r["align_method"]: r["align"]["train_seconds"] for r in records if r["selector"] == "full"}
    rows = []
    for r in records:
        hs = r["eval_attacked"]["harmful"]["beavertails-test"]
        align_s = r["align"]["train_seconds"]
        base = full_time.get(r["align_method"])
        row = [r["align_method"], r["selector"], r["ratio"], r["align"]["n_train"], selector_seconds(r), align_s,
               f"{align_s / base:.2f}" if base else None]
        row += [hs[j]["harmful_score"] for j in judges] + [r["eval_attacked"]["tasks"]["sst2"]["accuracy"]]
        if eval_aligned:
            before = r["eval_aligned"]["harmful"]["beavertails-test"]
            row += [before[j]["harmful_score"] for j in judges]
        rows.append(row)
    return header, rows


def write_results(args, machine: dict, records: list[dict], started: float, judges: list[str], markdown_table,
                  echo: bool = True) -> dict:
    result = {
        "benchmark": "curation",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine, "load_average_at_end": os.getloadavg()},
        "settings": vars(args),
        "wall_seconds": round(time.time() - started, 1),
        "records": records,
    }
    out = save_json(result, args.results)
    header, rows = table_rows(records, judges, args.eval_aligned)
    note = (f"model {args.model}; {args.n_candidates} candidate refusals ({args.n_validation} validation held out); "
            f"align {args.align_epochs:g} epoch(s), lr {args.align_lr}, batch {args.batch_size}, max length "
            f"{args.max_length}; attack: SST2 n={args.n_finetune}, p={args.poison_ratio}, lr {args.finetune_lr}; "
            f"HS on {args.n_prompts} beavertails-test prompts, FA on {args.n_task} SST2 rows; "
            f"device {machine['device']}, {machine['cpu_count']} CPUs, load at start {machine['load_average_at_start']}")
    out.with_suffix(".md").write_text(markdown_table(header, rows) + f"\n\n{note}\n")
    if echo:
        print("\n" + markdown_table(header, rows) + f"\n\n{note}\nresults in {out} and {out.with_suffix('.md')}",
              flush=True)
    return result


if __name__ == "__main__":
    main()
