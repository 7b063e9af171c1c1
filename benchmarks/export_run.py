"""Copy an experiment's small outputs into a tracked results folder, so that tables regenerate
from the repository alone (runs/ is not tracked and does not survive a new machine).

    python benchmarks/export_run.py runs/calib-b results/calib-b
    clinic report results/calib-b

An experiment whose stages were run by several runners (each with its own ``--output``, one store;
e.g. seed 1 and seed 2 of a file in parallel) has no run directory that holds its whole plan: give
the experiment file and the store instead, and the plan is written from them (no stage is run):

    python benchmarks/export_run.py --experiment configs/protocol-seeds-pharmacist-smollm2.yaml \
        --store runs/store results/protocol-seeds-pharmacist

A plan whose stages are spread over several stores names them all, looked in in order; the
results tree's shared store (below) is looked in last, so stages an earlier results folder
already holds (seed 0, the SFT baseline) need not be named:

    python benchmarks/export_run.py --experiment configs/protocol-seeds-defences-smollm2.yaml \
        --store runs/store --store /mnt/other-machine/runs/store results/protocol-seeds-defences

Every results folder of a tree shares one stage store, ``store/`` beside the folders
(``results/store``): a stage that several experiments hold (the SFT baseline, an aligned model
that several attacks start from) is kept once, and is looked in as the last store. Copies the
experiment file, plan.json (its store set to the shared store, ``../store``) and, for every
finished stage of the plan, the stage directory without weights (``adapter/``, ``model/``,
``checkpoints/``, ``*.safetensors``, ``*.bin``, ``*.pt``; a sink stage's ``per_sample.safetensors``,
its per-sample values, is kept) and without figures (``*.png``: their data are in ``sink.json`` and
``divergence.csv``), its ``generations.jsonl`` and a curation's ``scores.jsonl`` gzip-compressed (``.jsonl.gz``, ~4x
smaller; every reader takes either form). Unfinished stages are left out and listed; the folder's ``results.md`` (its report) is
written afresh. Re-running
adds the stages finished since and keeps those already copied (a stage directory never changes
once finished, and the copy may hold verdicts benchmarks/rejudge.py added). results/ travels with
every clone (budget: docs/results-smollm2.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from clinic.rundir import read_jsonl, write_jsonl_atomic

WEIGHTS = ("adapter", "model", "checkpoints", "trainer", "*.safetensors", "*.bin", "*.pt")
FIGURES = ("*.png",)
COMPRESSED = ("generations.jsonl", "scores.jsonl")  # per-prompt files; a curate stage's scores ~200 KB plain
SHARED = "store"  # the results tree's one stage store, beside its folders
KEPT = ("per_sample.safetensors",)  # a sink stage's per-sample values (~100 KB, the bootstrap's input), no weights


def _skip(directory: str, names: list[str]) -> set[str]:
    return set(shutil.ignore_patterns(*WEIGHTS, *FIGURES)(directory, names)) - set(KEPT)


def compact(stage: Path) -> None:
    """An exported stage's large per-prompt files as ``.gz`` (the plain copy removed)."""
    for name in COMPRESSED:
        if (stage / name).exists():
            write_jsonl_atomic(stage / f"{name}.gz", read_jsonl(stage / name))
            (stage / name).unlink()


def _fail(message: str) -> None:
    print(f"export_run: error: {message}", file=sys.stderr)
    sys.exit(2)


def shared_store(out: Path) -> Path:
    """The stage store of the results tree ``out`` belongs to: ``store/`` beside it."""
    return out.parent / SHARED


def export(run_dir: Path, out: Path, more_stores: tuple = ()) -> dict:
    """Copy the finished stages of ``run_dir``'s plan (looked up in its store, then in
    ``more_stores`` in order, then in the shared store) into the shared store, and its plan and
    experiment file into ``out``."""
    plan_path = run_dir / "plan.json"
    if not plan_path.exists():
        _fail(f"{plan_path} does not exist (not a `clinic run` directory)")
    if out.name == SHARED:
        _fail(f"{out} has the shared stage store's name; choose another folder name")
    plan = json.loads(plan_path.read_text())
    target = shared_store(out)
    own = (run_dir / plan["store"]).resolve()
    if target.resolve() == own:  # the runner's store (weights and all) would become the results store
        _fail(f"{target}, the store beside {out}, is the store the experiment ran in; export into a "
              f"folder of a results tree (e.g. results/{out.name})")
    stores = list(dict.fromkeys([own, *more_stores, target.resolve()]))  # naming results/store too is harmless
    target.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    copied, kept, missing = [], [], []
    for stage in plan["stages"]:
        src = next((s / stage["dir"] for s in stores if (s / stage["dir"] / "DONE").exists()), None)
        if src is None:
            missing.append(stage["dir"])
            continue
        dst = target / stage["dir"]
        if (dst / "DONE").exists():  # a finished stage never changes (its name is its settings' hash): keep
            kept.append(stage["dir"])  # the copy, with the verdicts benchmarks/rejudge.py added to it
            continue
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, ignore=_skip)
        compact(dst)
        copied.append(stage["dir"])
    for name in ("experiment.yaml", "clinic.json"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, out / name)
    (out / "plan.json").write_text(json.dumps({**plan, "store": f"../{SHARED}"}, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    size += sum(p.stat().st_size for s in plan["stages"] for p in (target / s["dir"]).rglob("*") if p.is_file())
    return {"copied": len(copied), "kept": len(kept), "unfinished": missing, "bytes": size}


def export_experiment(experiment: Path, store: Path, out: Path, more_stores: tuple = ()) -> dict:
    """:func:`export` of an experiment file's plan over ``store`` (then ``more_stores``), for stages
    that several runners ran, or that earlier results folders already hold."""
    from clinic.errors import ClinicError
    from clinic.experiment import Experiment
    from clinic.experiment.runner import write_plan

    if not store.is_dir():
        _fail(f"store {store} is not a directory")
    try:
        exp = Experiment.from_file(experiment)
        stages = exp.plan()
    except ClinicError as exc:
        _fail(str(exc))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        shutil.copy2(experiment, run_dir / "experiment.yaml")
        write_plan(run_dir, store.resolve(), exp, stages)
        return export(run_dir, out, more_stores)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, nargs="?", help="a `clinic run` directory (with plan.json)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--experiment", type=Path, help="instead of run_dir: an experiment file, its plan taken over --store")
    parser.add_argument("--store", type=Path, action="append", default=[],
                        help="a stage store (repeatable, looked in in order): the first is --experiment's; with a "
                             "run directory, all are looked in after its own (e.g. another machine's runs/store); "
                             "the shared results/store is looked in last")
    args = parser.parse_args(argv)
    if (args.experiment is None) == (args.run_dir is None):
        parser.error("give either a run directory or --experiment FILE --store DIR")
    if args.experiment is not None and not args.store:
        parser.error("--experiment needs --store")
    more = args.store[1:] if args.experiment is not None else args.store  # looked in after the plan's own store
    for store in more:
        if not store.is_dir():
            parser.error(f"store {store} is not a directory")
    more = tuple(s.resolve() for s in more)
    summary = (export(args.run_dir, args.out, more) if args.experiment is None
               else export_experiment(args.experiment, args.store[0], args.out, more))
    print(f"{args.out}: {summary['copied']} stages copied, {summary['kept']} kept, {summary['bytes'] / 2**20:.2f} MiB"
          + (f"; unfinished, left out: {', '.join(summary['unfinished'])}" if summary["unfinished"] else ""))
    write_results_md(args.out)


def write_results_md(out: Path) -> None:
    """The folder's results.md, its report as of this export (tests/test_results_page.py holds every
    committed one to that): a stage exported after the last report would leave it stale."""
    from clinic.errors import ClinicError
    from clinic.report.tables import results_markdown

    try:
        (out / "results.md").write_text(results_markdown(out))
    except (ClinicError, KeyError, ValueError) as exc:  # no report to write (e.g. a plan of bare stage names)
        print(f"{out}/results.md not written: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
