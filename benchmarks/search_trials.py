"""Run a long search trial by trial, exporting each trial into its results folder as it finishes,
so that what one machine finished survives it (runs/ does not; docs/experiments.md, "Resuming on a
new machine").

    CLINIC_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/search_trials.py \\
        configs/search-tvaccine-smollm2.yaml --by align --out results/search-tvaccine-smollm2 \\
        [--trials tvac-r1 tvac-r0.3] [--store runs/store]

Each trial is ``clinic run CONFIG --store STORE --output RUN --reuse STORE_OF_OUT --only BY=LABEL
--no-report`` in a process of its own (what the results tree already holds is copied, not run; a
failed trial is said and the next one runs), then ``export_run.py --experiment CONFIG --store
STORE OUT`` (a process of its own too), which adds the stages finished since. The trials, unless ``--trials`` names them:
every value of the label BY in the plan, in plan order. Commit OUT after each export (git is left
alone here). Two of these may share a store (one trial each, ``--trials``): a stage is run by one
runner at a time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from export_run import shared_store


def trial_labels(config: Path, by: str) -> list[str]:
    """Every value of the label ``by`` in the experiment's plan, in plan order."""
    from clinic.experiment import Experiment
    from clinic.experiment.plan import label_text  # as --only writes it (0.0 is "0")

    labels = [s.labels.get(by) for s in Experiment.from_file(config).plan()]
    return list(dict.fromkeys(label_text(v) for v in labels if v is not None))


def run_trials(config: Path, by: str, out: Path, trials: list[str], store: Path, run_dir: Path) -> list[str]:
    """Run and export each trial in turn; the labels of the trials whose run failed."""
    failed = []
    clinic = [sys.executable, "-m", "clinic.cli"]
    for i, label in enumerate(trials, 1):
        print(f"[{i}/{len(trials)}] {by}={label}", flush=True)
        done = subprocess.run([*clinic, "run", str(config), "--store", str(store), "--output", str(run_dir),
                               "--reuse", str(shared_store(out)), "--only", f"{by}={label}", "--no-report"])
        if done.returncode != 0:
            print(f"[{i}/{len(trials)}] {by}={label} failed (exit {done.returncode}); the next trial runs",
                  flush=True)
            failed.append(label)
        # what did finish is kept even when a stage failed; in a process of its own, as the trial: a
        # trial runs for hours, and this process importing code edited meanwhile (the report's
        # stage modules load on first use) once lost a finished trial's export to an ImportError
        exported = subprocess.run([sys.executable, str(Path(__file__).with_name("export_run.py")), "--experiment",
                                   str(config), "--store", str(store), str(out)])
        if exported.returncode != 0:
            print(f"[{i}/{len(trials)}] {by}={label}: the export failed (exit {exported.returncode}); run again, "
                  "the finished stages are kept", flush=True)
            failed.append(label)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the search's experiment file")
    parser.add_argument("--by", required=True, help="the label the trials differ in (align, finetune, repair, ...)")
    parser.add_argument("--out", type=Path, required=True, help="the results folder (results/<name>)")
    parser.add_argument("--trials", nargs="+", default=None, help="these values of --by only (default: all)")
    parser.add_argument("--store", type=Path, default=Path("runs/store"))
    parser.add_argument("--run-dir", type=Path, default=None, help="the clinic run directory (default runs/<name>)")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"{args.config}: no such experiment file")
    known = trial_labels(args.config, args.by)
    if not known:
        parser.error(f"no stage of {args.config} has the label {args.by!r}")
    unknown = [t for t in args.trials or () if t not in known]
    if unknown:
        parser.error(f"--trials {unknown[0]}: not a value of {args.by} in the plan ({', '.join(known)})")
    run_dir = args.run_dir or Path("runs") / args.config.stem
    shared_store(args.out).mkdir(parents=True, exist_ok=True)
    args.store.mkdir(parents=True, exist_ok=True)
    failed = run_trials(args.config, args.by, args.out, args.trials or known, args.store, run_dir)
    if failed:
        print(f"{len(failed)} trial(s) failed: {', '.join(failed)} (clinic run {args.config} --store "
              f"{args.store} --status says why)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
