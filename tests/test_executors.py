"""Executors: a grid run as jobs through submitit's local executor gives the in-process runner's
results; a failing stage is recorded with its own error, every other branch goes on, --status says
which failed and which wait on it, and --retry-failed runs them again. The SLURM path is
tests/test_slurm.py (a real one-node cluster)."""

from __future__ import annotations

import json

import pytest
import yaml

from clinic.cli import main
from clinic.errors import ClinicError
from clinic.experiment.executors import job_error, read_resources, resources_for
from clinic.settings import cpu_allocation

pytest.importorskip("submitit")


def grid(tmp_path, harmful) -> dict:
    """13 tiny stages: a curation, two alignments (booster's harmful data comes from ``harmful``,
    which may not exist yet), two fine-tunes of each, every model evaluated."""
    return {"name": "tiny-grid", "model": "tiny-random-llama",
            "curate": {"selector": "random", "ratio": 0.5, "options": {"n_candidates": 8, "n_validation": 2}},
            "align": {"methods": ["sft", {"name": "booster", "label": "fragile", "harmful_source": str(harmful),
                                          "harmful_size": 2}],
                      "train": {"max_steps": 4, "batch_size": 2, "max_length": 256, "logging_steps": 1}},
            "finetune": {"methods": ["sft"], "n": 8, "poison_ratios": [0.0, 0.5],
                         "train": {"max_steps": 2, "batch_size": 2, "max_length": 256}},
            "evaluate": {"n_prompts": 2, "judges": ["keyword"], "n_task": 2, "max_new_tokens": 4, "batch_size": 2,
                         "base": False}}


def outputs(root) -> dict:
    """{stage: metrics without timings, generations} of every finished stage."""
    plan = json.loads((root / "plan.json").read_text())
    store = root / plan["store"]
    found = {}
    for stage in plan["stages"]:
        folder = store / stage["dir"]
        if (folder / "DONE").exists():
            metrics = json.loads((folder / "metrics.json").read_text())
            keep = {k: v for k, v in metrics.items() if not k.endswith("seconds") and k != "peak_memory_mb"}
            gens = (folder / "generations.jsonl").read_text() if (folder / "generations.jsonl").exists() else None
            found[stage["dir"]] = (keep, gens)
    return found


def test_local_jobs_match_the_in_process_runner_and_failures_are_contained(tmp_path, capsys, monkeypatch, data_dir):
    monkeypatch.setenv("CLINIC_THREADS", "1")  # the same arithmetic in every process
    harmful = tmp_path / "harm.jsonl"
    exp = tmp_path / "grid.yaml"
    exp.write_text(yaml.safe_dump(grid(tmp_path, harmful)))
    assert main(["run", str(exp), "--output", str(tmp_path / "inproc"), "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 stage(s) failed (align-fragile-" in err and "does not exist" in err
    assert main(["run", str(exp), "--output", str(tmp_path / "jobs"), "--executor", "local", "--no-report"]) == 2
    capsys.readouterr()
    ours, theirs = outputs(tmp_path / "inproc"), outputs(tmp_path / "jobs")
    assert len(ours) == 7 and ours == theirs  # curate, sft align + eval, 2 fine-tunes + evals: byte for byte
    assert main(["run", str(exp), "--output", str(tmp_path / "jobs"), "--status"]) == 0
    out = capsys.readouterr().out
    assert "13 stages: 7 done, 0 running, 1 failed, 5 blocked, 0 pending" in out
    assert f"[failed] align-fragile-" in out and f"data file {harmful} does not exist" in out
    # the data appears: only the failed branch runs again, when asked
    harmful.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"harmful {i}"}) + "\n" for i in range(4)))
    assert main(["run", str(exp), "--output", str(tmp_path / "jobs"), "--executor", "local", "--no-report"]) == 2
    assert "1 stage(s) failed" in capsys.readouterr().err  # not retried unless asked
    assert main(["run", str(exp), "--output", str(tmp_path / "jobs"), "--executor", "local", "--retry-failed",
                 "--no-report"]) == 0
    assert len(outputs(tmp_path / "jobs")) == 13


def test_the_executor_file_is_checked(tmp_path):
    path = tmp_path / "executor.yaml"
    path.write_text(yaml.safe_dump({"default": {"timeout_min": 30}, "align": {"gpus_per_node": 1, "tasks_per_node": 2}}))
    table = read_resources(path)
    assert resources_for("align", table) == {"timeout_min": 30, "cpus_per_task": 2, "gpus_per_node": 1,
                                              "tasks_per_node": 2}
    assert resources_for("evaluate", table)["timeout_min"] == 30
    path.write_text(yaml.safe_dump({"alignn": {}}))
    with pytest.raises(ClinicError, match="unknown stage kind 'alignn' .*did you mean 'align'"):
        read_resources(path)
    path.write_text(yaml.safe_dump({"align": {"gpus": 1}}))
    with pytest.raises(ClinicError, match="unknown resource 'gpus' for align"):
        read_resources(path)


def test_a_job_failure_is_named_by_its_own_error():
    report = ("submitit job failed\nTraceback (most recent call last):\n  File x\n"
              "clinic.errors.ClinicError: data file /x.jsonl does not exist\n  - /logs/1_0_log.out\n")
    assert job_error(report) == "data file /x.jsonl does not exist"
    assert job_error("Traceback\nRuntimeError: CUDA out of memory\n  - /log") == "RuntimeError: CUDA out of memory"


@pytest.mark.parametrize(("files", "env", "expected"), [
    ({"cpu.max": "200000 100000\n"}, {}, 2),  # cgroup v2: 2 CPUs
    ({"cpu.max": "150000 100000\n"}, {}, 1),  # 1.5 CPUs: rounded down
    ({"cpu.max": "50000 100000\n"}, {}, 1),  # half a CPU: at least one thread
    ({"cpu.max": "max 100000\n"}, {}, None),  # no quota
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, {}, 4),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, {}, None),  # v1, no quota
    ({"cpu.max": "200000 100000\n"}, {"SLURM_CPUS_PER_TASK": "3"}, 3),  # SLURM's allocation first
])
def test_threads_follow_the_allocation_not_the_node(tmp_path, files, env, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = cpu_allocation(environ=env, cgroup_root=str(tmp_path))
    assert (found[0] if found else None) == expected
