"""Running an experiment: every pending stage in plan order, resumable and shareable between
runners (one lock per stage), the plan written as ``plan.json`` for the report."""

from __future__ import annotations

import logging

import json
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import ClinicError
from ..rundir import MARKER, check_writable, read_json, write_marker
from .plan import Stage, select
from .spec import Experiment, parse_yaml

logger = logging.getLogger(__name__)


def stage_path(store: Path, stage: Stage) -> Path:
    return store / stage.dirname


def is_done(store: Path, stage: Stage) -> bool:
    return (stage_path(store, stage) / "DONE").exists()


def reusable(stages: list[Stage], store: Path, reuse: tuple, keep: tuple = ()) -> dict[str, Path]:
    """The stages of the plan not finished in ``store`` that a store in ``reuse`` holds finished
    (the first that has it), and that no stage still to run needs: {stage dir: folder to copy}.

    A reused store is typically a results tree's (``results/store``, benchmarks/export_run.py),
    whose stages keep their outputs but no weights. A stage is therefore reused only when every
    child of it in the plan is finished or reused too: a pending child would train or evaluate
    from weights the copy does not hold. ``keep``: stages that must be run here even so (an
    attack search's aligned model, whose trials are added while the run goes on)."""
    children: dict[str, list[Stage]] = {}
    for s in stages:
        if s.parent is not None:
            children.setdefault(s.parent.dirname, []).append(s)
    found: dict[str, Path] = {}
    for s in stages:
        if stage_path(store, s).exists():  # finished here, or an unfinished folder left to the runner
            continue
        for other in reuse:
            if is_done(Path(other), s):
                found[s.dirname] = Path(other) / s.dirname
                break
    pinned = set()
    for s in keep:
        node = s
        while node is not None:
            pinned.add(node.dirname)
            node = node.parent
    memo: dict[str, bool] = {}

    def ok(s: Stage) -> bool:
        if s.dirname not in memo:
            memo[s.dirname] = (s.dirname in found and s.dirname not in pinned and
                               all(is_done(store, c) or ok(c) for c in children.get(s.dirname, [])))
        return memo[s.dirname]

    return {s.dirname: found[s.dirname] for s in stages if ok(s)}


def adopt(store: Path, stage: Stage, source: Path) -> bool:
    """Copy a finished stage folder into the store under the stage's lock (a staging folder renamed
    into place, as a stage is written: a killed copy leaves a partial :func:`_clear_partials`
    removes). False when another runner finished or began the stage meanwhile."""
    lock = FileLock(store / f".{stage.dirname}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:  # another runner is on it: it runs or copies it
        return False
    try:
        target = stage_path(store, stage)
        if target.exists():
            return False
        staging = store / f".{stage.dirname}.partial-reuse"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        staging.rename(target)
        return True
    finally:
        lock.release()


def _clear_partials(store: Path, stage: Stage) -> None:
    """Under the stage's lock every staging folder of it is a stopped run's: removed, except a
    resumable stage's (training) with a checkpoint to resume from, which the stage adopts when it
    is this very stage (and removes otherwise; clinic.methods.checkpoints)."""
    from ..methods.checkpoints import resumable_checkpoint
    from ..stages import get_stage_kind

    resumable = get_stage_kind(stage.kind).resumable
    for stale in store.glob(f".{stage.dirname}.partial-*"):
        if resumable and resumable_checkpoint(stale / "checkpoints") is not None:
            continue
        shutil.rmtree(stale, ignore_errors=True)


def run_stage(store: Path, exp: Experiment, stage: Stage, judges: dict) -> Path:
    """One planned stage, through :func:`clinic.stages.execute`: its kind turns the plan's config
    (and its parent's folder) into its settings and model."""
    from ..stages import execute, get_stage_kind

    kind = get_stage_kind(stage.kind)
    parent = stage_path(store, stage.parent) if stage.parent is not None else None
    settings, model = kind.from_plan(stage, parent, exp.model)
    # called under the stage's lock (the runner's or a cluster job's): a partial any host left is stale
    return execute(kind, settings, output=stage_path(store, stage), model=model, judges=judges, lock_held=True,
                   **exp.execution.stage_options())


def write_plan(root: Path, store: Path, exp: Experiment, stages: list[Stage]) -> None:
    plan = {
        "name": exp.name,
        "model": exp.model,
        "store": os.path.relpath(store, root),
        "stages": [{"kind": s.kind, "dir": s.dirname, "hash": s.hash, "parent": s.parent.hash if s.parent else None,
                    "labels": s.labels, "config": s.config} for s in stages],
    }
    (root / "plan.json").write_text(json.dumps(plan, indent=2, default=str) + "\n")


def run_experiment(path: str | Path | Experiment, output: str | Path | None = None, store: str | Path | None = None,
                   dry_run: bool = False, pace: tuple = (), only: tuple = (), execution: dict | None = None,
                   show_status: bool = False, retry: bool = False, workers: int = 1, reuse: tuple = ()) -> Path:
    """Run (or resume) every stage of an experiment file (or of an :class:`~.spec.Experiment`
    built in code: the demo); returns the experiment directory. A dry run costs the stages still
    to run at the pace of finished stages in the store and under the folders ``pace``. ``only``
    (``KEY=VALUE`` label filters, :func:`~.plan.select`) runs a part of the plan; the plan file and
    the report still cover all of it. The report is :func:`clinic.report.tables.write_report`'s
    (``clinic run`` writes it when the stages are done). ``show_status``: print what is done,
    running, failed, blocked and pending, and run nothing; ``retry``: run failed stages again
    (:mod:`.executors`); ``execution``: command-line execution settings over the file's; ``reuse``:
    other stores whose finished stages are copied in instead of run where nothing still to run
    needs their weights (:func:`reusable`; a new machine resumes from a results tree)."""
    exp = path if isinstance(path, Experiment) else Experiment.from_file(path)
    if execution:  # the command line's --device / --dtype beat the file's execution block
        import dataclasses

        exp.execution = dataclasses.replace(exp.execution, **execution)
    stages = exp.plan()
    chosen = select(stages, list(only)) if only else stages
    root = Path(output or Path("runs") / exp.name).expanduser().resolve()
    store = store or exp.execution.store  # --store, else the file's execution block, else <output>/stages
    store_dir = Path(store).expanduser().resolve() if store else root / "stages"
    recorded = root / "experiment.yaml"
    if recorded.exists() and _recorded_content(recorded) != _canonical(exp.parsed):
        # the parsed content, not the bytes: an edited comment or reformatting is the same experiment,
        # and so is one whose only change is how it runs (the execution block)
        raise ClinicError(f"{root} holds a different experiment (its experiment.yaml differs); "
                          f"choose another --output")
    if root.exists() and not root.is_dir():
        raise ClinicError(f"experiment directory {root} is a file; choose another --output")
    done = [s for s in stages if is_done(store_dir, s)]
    counts = {}
    for s in stages:
        counts[s.kind] = counts.get(s.kind, 0) + 1
    logger.info(f"clinic run {exp.name}: {len(stages)} stages ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
          f"{len(done)} already done; store {store_dir}")
    finished = {s.dirname for s in done}
    chosen_names = {s.dirname for s in chosen}
    searches = [g for g in exp.searches if g.fixed.dirname in chosen_names]
    reused = {k: v for k, v in reusable(stages, store_dir, tuple(Path(r).expanduser().resolve() for r in reuse),
                                        keep=tuple(g.fixed.parent for g in searches if g.fixed.parent)).items()
              if k in chosen_names} if reuse else {}
    if reuse:
        logger.info(f"--reuse: {len(reused)} finished stage(s) to copy instead of run"
                    + (f" (from {', '.join(sorted({str(v.parent) for v in reused.values()}))})" if reused else ""))
    if only:
        logger.info(f"--only {' '.join(only)}: {len(chosen)} of the {len(stages)} stages "
              f"({sum(s.dirname in finished for s in chosen)} already done)")
    if show_status:
        from .executors import status, status_lines

        logger.info("\n".join(status_lines(status(store_dir, chosen), store_dir)))
        return root
    if dry_run:
        from .estimate import duration, plan_estimate

        from .estimate import committed_results

        device = exp.execution.device if exp.execution.device not in ("auto", None) else "cpu"
        elsewhere = tuple(pace) or committed_results()  # a fresh clone paces from the committed results
        estimates, summary = plan_estimate(chosen, store_dir, lambda s: s.dirname in finished or s.dirname in reused,
                                           elsewhere, workers=workers, device=device.split(":")[0])
        for s in chosen:
            e = estimates.get(s.dirname)
            cost = f"  ~{duration(e['seconds'])} ({e['basis']})" if e else ""
            state = "done" if s.dirname in finished else "reuse" if s.dirname in reused else "todo"
            logger.info(f"  [{state}] {s.dirname}{cost}")
        for group in searches:
            logger.info(f"  [search] up to {group.search['budget']} more attacks on {group.fixed.dirname}")
        logger.info(summary)
        return root
    check_writable(root, root)
    check_writable(store_dir, store_dir)
    if store_dir.exists() and not store_dir.is_dir():
        raise ClinicError(f"stage store {store_dir} is a file; choose another --store")
    from ..modeling.device import resolve_device
    from ..stages import role_of
    from ..stages.evaluate import build_judges

    device = resolve_device(exp.execution.device)  # a device this machine lacks: one line, before any stage
    measures = any(role_of(s.kind) == "measurement" and not is_done(store_dir, s) and s.dirname not in reused
                   for s in chosen)
    # loaded once for every evaluation of the run (a judge model loads in seconds to minutes)
    judges = build_judges(exp.evaluate.get("judges", ["keyword", "harm-ce"]), device) if measures else {}
    root.mkdir(parents=True, exist_ok=True)
    if not (root / MARKER).exists():
        write_marker(root, "experiment")
    store_dir.mkdir(parents=True, exist_ok=True)
    if not recorded.exists():
        recorded.write_text(exp.source_text)
    write_plan(root, store_dir, exp, stages)
    if reused:
        copied = sum(adopt(store_dir, s, reused[s.dirname]) for s in chosen if s.dirname in reused)
        logger.info(f"--reuse: {copied} stage(s) copied into {store_dir}")
    if retry:
        from .executors import retry_failed

        logger.info(f"--retry-failed: {retry_failed(store_dir, chosen)} failed stage(s) will run again")
    if exp.execution.executor != "inprocess":
        from .executors import drive, read_resources, status_lines

        if searches:
            raise ClinicError("a budgeted attack search asks for its trials one by one: run it with the inprocess "
                              "executor (the default)")
        groups = drive(store_dir, exp, chosen, exp.execution.executor, root / "jobs",
                       read_resources(exp.execution.resources))
        logger.info("\n".join(status_lines(groups, store_dir)))
        _raise_failures(groups["failed"] + groups["blocked"], store_dir)
        return root
    _run_pending(store_dir, exp, chosen, judges)
    for group in searches:  # budgeted attack searches: each trial's stages are added as it is asked
        def run_point(new: list[Stage]) -> dict:
            known = {t.hash for t in stages}
            stages.extend(s for s in new if s.hash not in known)
            write_plan(root, store_dir, exp, stages)  # the report sees the trials
            _run_pending(store_dir, exp, new, judges)
            return read_json(stage_path(store_dir, new[1]) / "metrics.json")

        group.run(run_point, read_json(stage_path(store_dir, group.fixed) / "metrics.json"))
    return root


def _canonical(content) -> str:
    """The experiment's content as compared on resume: without the execution block, which says
    how and where it runs, not what it computes."""
    content = {k: v for k, v in content.items() if k != "execution"} if isinstance(content, dict) else content
    return json.dumps(content, sort_keys=True, default=str)


def _recorded_content(recorded: Path) -> str:
    try:
        return _canonical(parse_yaml(recorded.read_text(encoding="utf-8"), recorded) or {})
    except (ClinicError, OSError, UnicodeDecodeError):
        return ""  # unreadable: not the same experiment


def _run_pending(store: Path, exp: Experiment, stages: list[Stage], judges: dict, poll_s: float = 5.0) -> None:
    """Run every unfinished stage, in plan order where possible, sharing the store with any
    other runner.

    A stage is run by one runner at a time: it holds a :class:`filelock.FileLock` on
    ``.<stage>.lock`` in the store. Several runners may share a store (two experiment files, or
    two workers on one file): each takes the next stage whose parent is done and whose lock is
    free, and waits when every remaining stage is held by another runner. The OS releases the
    lock of a killed runner, so there is no stale lock to detect; the empty lock files stay."""
    from .executors import failed_marker

    pending = [s for s in stages if not is_done(store, s) and not failed_marker(store, s).exists()]
    # stages an earlier run left failed: skipped (until --retry-failed), and said at the end
    total, finished, waiting_said = len(pending), 0, False
    failed = [s for s in stages if not is_done(store, s) and failed_marker(store, s).exists()]
    while pending:
        ran = False
        for stage in list(pending):
            if is_done(store, stage):  # another runner finished it
                pending.remove(stage)
                continue
            if _blocked(store, stage):  # an ancestor failed: it waits for --retry-failed
                pending.remove(stage)
                continue
            if stage.parent is not None and not is_done(store, stage.parent):
                continue
            lock = FileLock(store / f".{stage.dirname}.lock", timeout=0)
            try:
                lock.acquire()
            except Timeout:  # another runner holds it
                continue
            try:
                if not is_done(store, stage):
                    _clear_partials(store, stage)
                    finished += 1
                    logger.info(f"[{finished}/{total}] {stage.kind} {stage.dirname}")
                    start = time.perf_counter()
                    run_stage(store, exp, stage, judges)
                    logger.info(f"[{finished}/{total}] done in {time.perf_counter() - start:.0f} s")
            except Exception as exc:  # noqa: BLE001  recorded; the other branches go on
                if not is_done(store, stage):  # not "someone else finished it first"
                    from .executors import _record_failure

                    message = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                    _record_failure(store, stage, message if isinstance(exc, ClinicError) else
                                    f"{type(exc).__name__}: {message}", None)
                    logger.info(f"[{finished}/{total}] failed: {message}")
                    failed.append(stage)
                    if not isinstance(exc, ClinicError):
                        raise
            finally:
                lock.release()
            pending.remove(stage)
            ran, waiting_said = True, False
            break  # rescan from the top: plan order first
        if pending and not ran:
            if not waiting_said:
                logger.info(f"waiting for {len(pending)} stage(s) held by another runner")
                waiting_said = True
            _wait(poll_s)
    _raise_failures(failed, store)


def _blocked(store: Path, stage: Stage) -> bool:
    from .executors import failed_marker

    node = stage.parent
    while node is not None:
        if failed_marker(store, node).exists():
            return True
        node = node.parent
    return False


def _raise_failures(failed: list[Stage], store: Path) -> None:
    """One line for every stage that failed (its own error) or waits on one that did."""
    if not failed:
        return
    import json

    from .executors import failed_marker

    own = [s for s in failed if failed_marker(store, s).exists()]
    first = json.loads(failed_marker(store, own[0]).read_text())["error"] if own else ""
    raise ClinicError(f"{len(own)} stage(s) failed ({', '.join(s.dirname for s in own)}; first: {first}); the "
                      f"other branches ran; `clinic run FILE --status` lists them, --retry-failed runs them again")


def _wait(seconds: float) -> None:
    time.sleep(seconds)
