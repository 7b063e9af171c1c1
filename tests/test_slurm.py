"""The cluster path on a real SLURM (a one-node cluster on localhost: .ci/slurm-up.sh): a tiny grid
(curate, two alignments, fine-tunes, evaluations: 13 stages) through ``--executor submitit``
gives the in-process runner's results byte for byte; a job preempted mid-training (SIGUSR2, the
signal SLURM sends before a preemption or a time limit: submitit requeues the job through
``StageJob.checkpoint``) resumes from its checkpoint, on whatever node it lands, to the same weights; a stage made to fail leaves every
other branch finished and ``--status`` names it. Done and failed are read from clinic's own stage
markers, never from SLURM accounting (there is none here: no slurmdbd)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_executors import grid, outputs

pytestmark = pytest.mark.slurm


def _cluster_up() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return done.returncode == 0 and any(s.startswith(("idle", "mix", "alloc")) for s in done.stdout.split())


@pytest.fixture(scope="module")
def cluster():
    if not _cluster_up():
        message = "no SLURM cluster is up (.ci/slurm-up.sh starts a one-node one)"
        if os.environ.get("CLINIC_REQUIRE_SLURM") == "1":
            pytest.fail(message)  # CI: a green run means the cluster path ran
        pytest.skip(message)


def _job_of(stage_prefix: str) -> str | None:
    done = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        job, name, state = line.split()
        if name.startswith(f"clinic-{stage_prefix}") and state == "RUNNING":
            return job
    return None


def test_a_grid_on_slurm_matches_the_local_runner_survives_a_requeue_and_contains_a_failure(tmp_path, cluster,
                                                                                           data_dir):
    env = {**os.environ, "CLINIC_THREADS": "1", "CLINIC_CHECKPOINT_MINUTES": "1e-9", "CLINIC_DATA_DIR": str(data_dir),
           "HF_HUB_OFFLINE": "1"}
    content = grid(tmp_path, tmp_path / "harm.jsonl")  # the harmful file is missing: booster's branch fails
    content["align"]["train"]["max_steps"] = 80  # long enough to be requeued mid-way (a checkpoint every step)
    exp = tmp_path / "grid.yaml"
    exp.write_text(yaml.safe_dump(content))
    clinic = [sys.executable, "-m", "clinic.cli", "run", str(exp), "--no-report"]
    local = subprocess.run([*clinic, "--output", str(tmp_path / "local")], env=env, capture_output=True, text=True,
                           timeout=600)
    assert local.returncode == 2 and "1 stage(s) failed (align-fragile-" in local.stderr, local.stderr[-2000:]

    run = subprocess.Popen([*clinic, "--output", str(tmp_path / "slurm"), "--executor", "submitit"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    store = tmp_path / "slurm" / "stages"
    requeued = None
    deadline = time.time() + 300
    while requeued is None and time.time() < deadline and run.poll() is None:
        partial = [p for p in store.glob(".align-sft-*.partial-*")
                   if any(int(c.name.split("-")[1]) >= 3 for c in p.glob("checkpoints/checkpoint-*"))]
        job = _job_of("align-sft") if partial else None
        if job:  # the preemption signal: submitit calls StageJob.checkpoint, requeues the job and exits it
            subprocess.run(["scancel", "--signal=USR2", job], check=True)
            requeued = job
        time.sleep(0.2)
    out, _ = run.communicate(timeout=600)
    assert requeued, "the alignment job was never caught mid-training:\n" + out[-3000:]
    assert run.returncode == 2 and "1 stage(s) failed (align-fragile-" in out, out[-3000:]

    ours, theirs = outputs(tmp_path / "local"), outputs(tmp_path / "slurm")
    align = next(k for k in theirs if k.startswith("align-sft-"))
    resumed = theirs[align][0].pop("resumed_from_step", None)
    assert resumed is not None and resumed >= 3, theirs[align]  # it did resume, from a checkpoint
    for run_metrics in (ours[align][0], theirs[align][0]):  # Trainer averages the loss of this process's steps
        run_metrics.pop("train_loss")
    assert ours == theirs  # every finished stage: the same metrics and generations
    adapter = "adapter/adapter_model.safetensors"
    assert (store / align / adapter).read_bytes() == (tmp_path / "local" / "stages" / align / adapter).read_bytes()

    status = subprocess.run([*clinic[:-1], "--output", str(tmp_path / "slurm"), "--status"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "13 stages: 7 done, 0 running, 1 failed, 5 blocked, 0 pending" in status.stdout, status.stdout
    assert "[failed] align-fragile-" in status.stdout and "does not exist" in status.stdout
    record = json.loads(next(store.glob(".align-fragile-*.FAILED")).read_text())
    assert Path(record["log"]).exists()  # the job's own log, from the cluster
