"""``clinic run``: run or resume an experiment file (:mod:`clinic.experiment`)."""

from __future__ import annotations

import os

from .parser import ArgParser


def parser(name: str) -> ArgParser:
    p = ArgParser(prog=f"clinic {name}", description="Run or resume an experiment. Finished stages are skipped; a "
                  "killed evaluation restarts from its beginning, a killed training stage from its newest checkpoint "
                  "(every CLINIC_CHECKPOINT_MINUTES, default 10). See docs/experiments.md.")
    p.add_argument("experiment", help="experiment YAML file (see configs/)")
    p.add_argument("--output", help="experiment directory (default runs/<experiment name>)")
    p.add_argument("--store", help="stage store shared between experiments (default <output>/stages)")
    p.add_argument("--dry-run", action="store_true", help="print the stages and whether each is done, run nothing")
    p.add_argument("--pace", action="append", default=[], metavar="DIR",
                   help="with --dry-run: also take the pace from the finished stages under DIR (repeatable; e.g. "
                   "results, whose committed stages keep their config and metrics: a new machine's empty store "
                   "has none)")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="run only the stages with this label, and the stages they need (repeatable: values of one "
                   "key are alternatives, keys combine), e.g. --only seed=1 --only align=tvaccine; the stages "
                   "keep the file's hashes and the report covers the whole plan. Keys: seed, align, finetune, "
                   "task, p, stage, model, repair, attack")
    p.add_argument("--reuse", action="append", default=[], metavar="STORE",
                   help="another stage store whose finished stages are copied in instead of run (repeatable, looked "
                   "in in order; e.g. results/store, whose stages hold no weights: a stage is reused only when no "
                   "stage still to run needs its weights). A new machine resumes a long search from what was "
                   "committed")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--executor", choices=("inprocess", "local", "submitit"), default=None,
                   help="how stages run: inprocess (default), local (one subprocess per stage, through submitit) or "
                   "submitit (SLURM jobs); each stage whose parents are done is a job (docs/cluster.md)")
    p.add_argument("--resources", metavar="FILE", default=None,
                   help="executor file: resources per stage kind (GPUs, CPUs, memory, time, partition), YAML")
    p.add_argument("--status", action="store_true", help="list done / running / failed / blocked / pending stages; run "
                   "nothing")
    p.add_argument("--retry-failed", action="store_true", help="run the stages a previous run recorded as failed again")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --dry-run: estimate the wall time with N stages at once (N GPUs or jobs)")
    p.add_argument("--device", default=None, help="where stages compute (default: the file's execution block, else "
                   "auto: CUDA, else MPS, else the CPU); never part of a stage's hash")
    p.add_argument("--report-to", default=None, help="where training stages log their losses: tensorboard, wandb, "
                   "mlflow, trackio (default $CLINIC_REPORT_TO, else none); never part of a stage's hash")
    p.add_argument("--dtype", default=None, help="dtype models are loaded in for evaluation, sink, curation and repair "
                   "(default: the file's, else auto); never part of a stage's hash")
    p.checks.append(_pace_check)
    return p


def _pace_check(args) -> str | None:
    if args.pace and not args.dry_run:
        return "--pace only costs a dry run; add --dry-run"
    if args.workers is not None and (not args.dry_run or args.workers < 1):
        return "--workers N (N >= 1) estimates a dry run's wall time; add --dry-run"
    if args.resources and not os.path.isfile(args.resources):
        return f"--resources {args.resources}: no such file"
    for flag in ("pace", "reuse"):
        missing = [d for d in getattr(args, flag) if not os.path.isdir(d)]
        if missing:
            return f"--{flag} {missing[0]}: no such folder"
    return None


def run(args) -> None:
    from ..experiment import run_experiment

    given = {k: getattr(args, k) for k in ("device", "dtype", "executor", "resources", "report_to")
             if getattr(args, k) is not None}
    root = run_experiment(args.experiment, args.output, args.store, dry_run=args.dry_run, pace=args.pace,
                          only=args.only, execution=given, show_status=args.status, retry=args.retry_failed,
                          workers=args.workers or 1, reuse=tuple(args.reuse))
    if not args.dry_run and not args.status and not args.no_report:
        from ..report.tables import write_report

        write_report(root, root / "report", overwrite=True)
