"""Where a plan's stages run: in this process (``inprocess``, the default), or as jobs through
submitit: local subprocesses (``local``) or a SLURM cluster (``submitit``). The seam is small: a job
is :class:`StageJob`, a pure function of one planned stage's config (it re-derives everything from
it, takes the stage's lock, runs :func:`clinic.stages.execute` and returns), and the driver
(:func:`drive`) submits every stage whose parents are done, polls, and records what failed.

Job states come from clinic's own markers, never from SLURM accounting: a stage is done when its
folder has ``DONE``; failed when its job ended without it (``.<stage>.FAILED`` in the store: the
error, the job's log, the host and time); running while its lock is held; blocked when an ancestor
failed. A failed stage is retried only when asked (``--retry-failed``); every other branch goes on.

Resources per stage kind come from the executor file (``execution.resources`` or ``--resources``),
YAML, never hashed::

    default:  {timeout_min: 60, cpus_per_task: 4, mem_gb: 32}
    align:    {gpus_per_node: 1, timeout_min: 720, tasks_per_node: 1, slurm_partition: gpu}
    finetune: {gpus_per_node: 1, timeout_min: 240}
    evaluate: {gpus_per_node: 1, timeout_min: 60}

A key is a parameter of ``submitit.AutoExecutor.update_parameters``; ``tasks_per_node`` > 1 runs
a training stage under DDP (submitit's distributed environment, one process per task). A
preempted or requeued job (SIGUSR2 through :meth:`StageJob.checkpoint`, or ``scontrol requeue``)
starts again wherever it lands and adopts the stage's partial run: under the stage's lock no
process anywhere writes it, so a training stage resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from ..errors import ClinicError
from .plan import Stage

EXECUTOR_PARAMETERS = ("timeout_min", "cpus_per_task", "mem_gb", "gpus_per_node", "tasks_per_node", "nodes",
                       "slurm_partition", "slurm_account", "slurm_qos", "slurm_constraint", "slurm_array_parallelism",
                       "slurm_additional_parameters", "slurm_setup")
DEFAULT_RESOURCES = {"timeout_min": 24 * 60, "cpus_per_task": 2}


def failed_marker(store: Path, stage: Stage) -> Path:
    return store / f".{stage.dirname}.FAILED"


def lock_path(store: Path, stage: Stage) -> Path:
    return store / f".{stage.dirname}.lock"


def read_resources(path: str | Path | None) -> dict[str, dict]:
    """The executor file: ``{stage kind or "default": {parameter: value}}``, checked (one line
    names an unknown kind or parameter)."""
    from ..stages import STAGE_KINDS
    from ..values import nearest_hint

    if not path:
        return {}
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClinicError(f"executor file {path} cannot be read: {(str(exc).splitlines() or [''])[0]}") from None
    if not isinstance(content, dict):
        raise ClinicError(f"executor file {path} must map stage kinds to resources")
    kinds = ["default", *STAGE_KINDS.names()]
    for kind, params in content.items():
        if kind not in kinds:
            raise ClinicError(f"executor file {path}: unknown stage kind {kind!r}{nearest_hint(kind, kinds)}; "
                              f"choose among {', '.join(kinds)}")
        if not isinstance(params, dict):
            raise ClinicError(f"executor file {path}: {kind} must be a mapping of resources")
        for key in params:
            if key not in EXECUTOR_PARAMETERS:
                raise ClinicError(f"executor file {path}: unknown resource {key!r} for {kind}"
                                  f"{nearest_hint(key, EXECUTOR_PARAMETERS)}; choose among {', '.join(EXECUTOR_PARAMETERS)}")
    return content


def resources_for(kind: str, table: dict[str, dict]) -> dict:
    return {**DEFAULT_RESOURCES, **(table.get("default") or {}), **(table.get(kind) or {})}


class StageJob:
    """One stage as a job: picklable, a pure function of the stage (its config and parents' hashes)
    and where it runs. Re-running it is harmless: a finished stage returns at once."""

    def __init__(self, store: Path, stage: Stage, exp_model: str, execution: dict):
        self.store, self.stage, self.exp_model, self.execution = Path(store), stage, exp_model, dict(execution)

    def __call__(self) -> str:
        from ..settings import apply_cpu_math

        apply_cpu_math()  # as a command does: CLINIC_THREADS, else the job's allocation, not the node's load
        distributed = self._distributed()
        done = self.store / self.stage.dirname / "DONE"
        if done.exists():
            return self.stage.dirname
        if distributed and int(os.environ.get("RANK", "0")) != 0:  # rank 0 holds the lock for the stage
            self._run()
            return self.stage.dirname
        with FileLock(lock_path(self.store, self.stage)):
            if not done.exists():
                from .runner import _clear_partials

                _clear_partials(self.store, self.stage)
                self._run()
        return self.stage.dirname

    def _run(self) -> None:
        from types import SimpleNamespace

        from .blocks import ExecutionConfig
        from .runner import run_stage
        from ..stages import role_of

        exp = SimpleNamespace(model=self.exp_model, execution=ExecutionConfig(**self.execution))
        judges = {}
        if role_of(self.stage.kind) == "measurement":
            from ..modeling.device import resolve_device
            from ..stages.evaluate import build_judges

            judges = build_judges(self.stage.config.get("judges", []), resolve_device(exp.execution.device))
        run_stage(self.store, exp, self.stage, judges)

    @staticmethod
    def _distributed() -> bool:
        """Under a multi-task job, export torch's distributed environment (submitit's helper)."""
        try:
            import submitit

            env = submitit.JobEnvironment()
        except (ImportError, RuntimeError):
            return False
        if env.num_tasks <= 1:
            return False
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return True

    def checkpoint(self, *args, **kwargs):
        """submitit's preemption hook (SIGUSR2): requeue the same job. Nothing to save here: the
        training stage checkpoints on its own, and the requeued job adopts its partial run."""
        import submitit

        return submitit.helpers.DelayedSubmission(StageJob(self.store, self.stage, self.exp_model, self.execution))


def stage_state(store: Path, stage: Stage, failed: set[str]) -> str:
    """done / failed / blocked / running / pending, from clinic's markers and locks."""
    if (store / stage.dirname / "DONE").exists():
        return "done"
    if failed_marker(store, stage).exists():
        return "failed"
    node = stage.parent
    while node is not None:
        if node.hash in failed or failed_marker(store, node).exists():
            return "blocked"
        node = node.parent
    if lock_path(store, stage).exists():
        try:
            FileLock(lock_path(store, stage), timeout=0).acquire()
        except Timeout:
            return "running"
        else:
            FileLock(lock_path(store, stage)).release()
    return "pending"


def status(store: Path, stages: list[Stage]) -> dict[str, list[Stage]]:
    """The stages by state (:func:`stage_state`), in plan order."""
    failed = {s.hash for s in stages if failed_marker(store, s).exists()}
    out: dict[str, list[Stage]] = {k: [] for k in ("done", "running", "failed", "blocked", "pending")}
    for stage in stages:
        out[stage_state(store, stage, failed)].append(stage)
    return out


def retry_failed(store: Path, stages: list[Stage]) -> int:
    """Forget the failures of ``stages`` (``--retry-failed``); returns how many."""
    markers = [failed_marker(store, s) for s in stages if failed_marker(store, s).exists()]
    for marker in markers:
        marker.unlink()
    return len(markers)


def job_error(text: str) -> str:
    """The one line that says why a job failed, out of submitit's report (the job's traceback and
    log paths): clinic's own error when it raised one, else the last exception line."""
    import re

    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for pattern in (r"(?:clinic\.errors\.)?ClinicError: (.+)$", r"^\w+(?:\.\w+)*(?:Error|Exception): .+$"):
        found = [m for line in lines if (m := re.search(pattern, line))]
        if found:
            return found[-1].group(1) if found[-1].groups() else found[-1].group(0)
    return lines[-1] if lines else "the job failed"


def _record_failure(store: Path, stage: Stage, error: str, log: str | None) -> None:
    failed_marker(store, stage).write_text(json.dumps({
        "stage": stage.dirname, "error": error[-4000:], "log": log, "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1) + "\n")


def make_executor(kind: str, folder: Path):
    """A submitit executor: ``local`` (subprocesses on this machine) or ``submitit`` (SLURM)."""
    try:
        import submitit
    except ImportError:
        raise ClinicError(f"--executor {kind} needs submitit: pip install submitit (or clinic[cluster])") from None
    import logging

    # without slurmdbd (sacct) submitit warns on every poll; clinic reads its own stage markers
    logging.getLogger("submitit").setLevel(logging.ERROR)
    cluster = "local" if kind == "local" else "slurm"
    if cluster == "slurm":
        import shutil

        if shutil.which("sbatch") is None:
            raise ClinicError("--executor submitit submits to SLURM, but sbatch is not on PATH here; use --executor "
                              "local, or run on the cluster's login node")
    return submitit.AutoExecutor(folder=str(folder), cluster=cluster)


def drive(store: Path, exp, stages: list[Stage], kind: str, folder: Path, resources: dict, poll_s: float = 2.0,
          say=print) -> dict[str, list[Stage]]:
    """Run every unfinished stage of ``stages`` as a job (``kind``: local or submitit) as soon as
    its parents are done; returns the final :func:`status`. A failing stage is recorded and its
    descendants blocked; every other branch goes on."""
    executor = make_executor(kind, folder)
    running: dict[str, tuple[Stage, object]] = {}
    submitted = 0
    while True:
        state = status(store, stages)
        for dirname, (stage, job) in list(running.items()):
            if not job.done():
                continue
            del running[dirname]
            if (store / stage.dirname / "DONE").exists():
                say(f"[done] {stage.kind} {stage.dirname}")
                continue
            try:
                job.result()
                error = "the job ended without the stage's DONE marker"
            except Exception as exc:  # noqa: BLE001  whatever the job raised, it is this stage's failure
                error = job_error(str(exc))
            _record_failure(store, stage, error, str(getattr(job.paths, "stderr", "")))
            say(f"[failed] {stage.kind} {stage.dirname}: {error}")
        state = status(store, stages)
        for stage in state["pending"]:
            if stage.dirname in running or (stage.parent is not None and not (store / stage.parent.dirname / "DONE").exists()):
                continue
            params = resources_for(stage.kind, resources)
            executor.update_parameters(name=f"clinic-{stage.dirname}"[:64], **params)
            job = executor.submit(StageJob(store, stage, exp.model, vars(exp.execution)))
            running[stage.dirname] = (stage, job)
            submitted += 1
            say(f"[submitted] {stage.kind} {stage.dirname} (job {job.job_id})")
        if not running:
            return status(store, stages)
        time.sleep(poll_s)


def status_lines(groups: dict[str, list[Stage]], store: Path) -> list[str]:
    """What ``clinic run --status`` prints: the counts, then each stage that is not done."""
    counts = ", ".join(f"{len(v)} {k}" for k, v in groups.items())
    lines = [f"{sum(len(v) for v in groups.values())} stages: {counts}"]
    for state in ("failed", "running", "blocked", "pending"):
        for stage in groups[state]:
            extra = ""
            if state == "failed":
                record = json.loads(failed_marker(store, stage).read_text())
                extra = f": {record['error']} (log {record.get('log')})"
            lines.append(f"  [{state}] {stage.dirname}{extra}")
    return lines
