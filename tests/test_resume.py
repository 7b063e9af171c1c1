"""A training stage killed mid-way resumes from its newest checkpoint (clinic.methods.checkpoints).

The kill is real: a child process trains and is SIGKILLed right after its step-3 checkpoint, so
its staging folder stays behind exactly as a killed run leaves it. The next run of the same stage
adopts the folder and resumes; for plain SFT it must end with the weights of a run that was never
interrupted (the resumed run replays the same optimizer, schedule, RNG and data order, so the
arithmetic is the same operations in the same order: equality, not closeness).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

STEPS, KILL_AT = 6, 3

CHILD = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == {kill}:
                os.kill(os.getpid(), signal.SIGKILL)

    run_train("align", model="tiny-random-llama", method="sft",
              train=train_config("cpu-align", max_steps={steps}, batch_size=2, lr={lr}, logging_steps=1),
              data=DataConfig(source="refusals", n={n}), output=sys.argv[1], callbacks=[Kill()])
""")


class _Steps:
    """Counts the optimizer steps this process runs."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Count(TrainerCallback):
            done = 0

            def on_step_end(self, args, state, control, **kwargs):
                self.done += 1

        return Count()


def _train(output, lr=5e-4, steps=None, n=16, **env):
    from clinic.modeling.training import train_config
    from clinic.stages.train import DataConfig, run_train

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_train("align", model="tiny-random-llama", method="sft",
                         train=train_config("cpu-align", max_steps=STEPS, batch_size=2, lr=lr, logging_steps=1),
                         data=DataConfig(source="refusals", n=n), output=output,
                         callbacks=[steps] if steps is not None else None)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _killed_run(output, lr=5e-4, n=16):
    """A child that checkpoints every step and is killed after step KILL_AT's checkpoint."""
    env = {**os.environ, "CLINIC_CHECKPOINT_MINUTES": "1e-9", "CLINIC_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD.format(kill=KILL_AT, steps=STEPS, lr=lr, n=n), str(output)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == -9, done.stderr[-2000:]
    staged = list(output.parent.glob(f".{output.name}.partial-*"))
    assert len(staged) == 1 and not output.exists()
    from clinic.methods.checkpoints import checkpoints, resumable_checkpoint

    # killed between the save and the pruning of the one before: at most the last two are there
    kept = [p.name for p in checkpoints(staged[0] / "checkpoints")]
    assert kept[-1] == f"checkpoint-{KILL_AT}" and len(kept) <= 2
    assert resumable_checkpoint(staged[0] / "checkpoints").name == f"checkpoint-{KILL_AT}"
    return staged[0]


def test_a_killed_stage_resumes_to_the_uninterrupted_weights(tmp_path, data_dir, capfd):
    staged = _killed_run(tmp_path / "resumed")
    steps = _Steps()
    resumed = _train(tmp_path / "resumed", steps=steps)
    assert steps.done == STEPS - KILL_AT  # it continued; it did not start again
    assert f"resuming resumed from step {KILL_AT}" in capfd.readouterr().err
    assert not staged.exists()
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == KILL_AT and metrics["steps"] == STEPS
    # the resume checkpoint is gone, and no pickle stays (optimizer.pt, rng_state.pth, ...)
    assert not list((resumed / "checkpoints").glob("checkpoint-*"))
    assert not [p for p in resumed.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
    log = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == list(range(1, STEPS + 1))  # the history before the kill too

    straight = _train(tmp_path / "straight", CLINIC_CHECKPOINT_MINUTES="0")
    assert "resumed_from_step" not in json.loads((straight / "metrics.json").read_text())
    a = load_file(resumed / "adapter" / "adapter_model.safetensors")
    b = load_file(straight / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # and training did move them: the comparison is not between two untouched initialisations
    first = [e["loss"] for e in log if "loss" in e]
    assert first[0] != first[-1]


def test_a_stage_killed_in_a_later_epoch_resumes_on_that_epochs_batches(tmp_path, data_dir, monkeypatch):
    """4 rows, batch 2: two steps an epoch, so the kill after step 3 lands in epoch 2. The resumed
    run must train on epoch 2's length-grouped batches, not draw epoch 1's again (the sampler's
    generator is fresh in a new process: it replays the earlier epochs' draws)."""
    monkeypatch.setenv("CLINIC_THREADS", "1")
    _killed_run(tmp_path / "resumed", n=4)
    resumed = _train(tmp_path / "resumed", n=4)
    assert json.loads((resumed / "metrics.json").read_text())["resumed_from_step"] == KILL_AT
    straight = _train(tmp_path / "straight", n=4, CLINIC_CHECKPOINT_MINUTES="0")
    a = load_file(resumed / "adapter" / "adapter_model.safetensors")
    b = load_file(straight / "adapter" / "adapter_model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_ctrl_c_keeps_the_checkpoint_and_the_next_run_resumes(tmp_path, data_dir, capfd):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == KILL_AT:
                raise KeyboardInterrupt

    os.environ["CLINIC_CHECKPOINT_MINUTES"] = "1e-9"
    try:
        from clinic.modeling.training import train_config
        from clinic.stages.train import DataConfig, run_train

        with pytest.raises(KeyboardInterrupt):
            run_train("align", model="tiny-random-llama", method="sft",
                      train=train_config("cpu-align", max_steps=STEPS, batch_size=2, lr=5e-4, logging_steps=1),
                      data=DataConfig(source="refusals", n=16), output=tmp_path / "run", callbacks=[Interrupt()])
    finally:
        del os.environ["CLINIC_CHECKPOINT_MINUTES"]
    assert "is kept, and the next run of run resumes" in capfd.readouterr().err
    (staged,) = tmp_path.glob(".run.partial-*")
    assert json.loads((staged / "clinic.json").read_text())["stopped"] is True
    steps = _Steps()
    _train(tmp_path / "run", steps=steps)  # the same process: "stopped" makes it adoptable
    assert steps.done == STEPS - KILL_AT and not staged.exists()
    assert "resuming run from step 3" in capfd.readouterr().err


def test_an_error_still_removes_the_staging_folder(tmp_path, data_dir):
    from transformers import TrainerCallback

    class Fail(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise RuntimeError("boom")

    os.environ["CLINIC_CHECKPOINT_MINUTES"] = "1e-9"
    try:
        from clinic.modeling.training import train_config
        from clinic.stages.train import DataConfig, run_train

        with pytest.raises(RuntimeError, match="boom"):
            run_train("align", model="tiny-random-llama", method="sft",
                      train=train_config("cpu-align", max_steps=STEPS, batch_size=2, logging_steps=1),
                      data=DataConfig(source="refusals", n=16), output=tmp_path / "run", callbacks=[Fail()])
    finally:
        del os.environ["CLINIC_CHECKPOINT_MINUTES"]
    assert not list(tmp_path.glob(".run.partial-*"))


def test_a_stopped_run_of_other_settings_is_not_resumed(tmp_path, data_dir, capfd):
    staged = _killed_run(tmp_path / "run", lr=5e-4)
    finished = _train(tmp_path / "run", lr=1e-4)  # another learning rate: another stage
    err = capfd.readouterr().err
    assert "resuming" not in err and "removed" in err and not staged.exists()
    assert "resumed_from_step" not in json.loads((finished / "metrics.json").read_text())


def test_checkpoint_minutes_from_the_environment(monkeypatch):
    from clinic.errors import ClinicError
    from clinic.settings import CHECKPOINT_MINUTES, checkpoint_minutes

    monkeypatch.delenv("CLINIC_CHECKPOINT_MINUTES", raising=False)
    assert checkpoint_minutes() == CHECKPOINT_MINUTES
    monkeypatch.setenv("CLINIC_CHECKPOINT_MINUTES", "2.5")
    assert checkpoint_minutes() == 2.5
    for bad in ("-1", "soon", "nan", "inf"):
        monkeypatch.setenv("CLINIC_CHECKPOINT_MINUTES", bad)
        with pytest.raises(ClinicError, match="CLINIC_CHECKPOINT_MINUTES"):
            checkpoint_minutes()


def test_the_callback_saves_on_time_and_keeps_the_newest(tmp_path):
    from types import SimpleNamespace

    from clinic.methods.checkpoints import ResumeCheckpoints

    now = [0.0]
    callback = ResumeCheckpoints(minutes=1, save_steps=4, clock=lambda: now[0])
    args = SimpleNamespace(output_dir=str(tmp_path))
    control = SimpleNamespace(should_save=False)
    state = SimpleNamespace(global_step=1, max_steps=10)
    callback.on_train_begin(args, state, control)
    now[0] = 59.0
    callback.on_step_end(args, state, control)
    assert not control.should_save
    now[0] = 60.0
    callback.on_step_end(args, state, control)
    assert control.should_save
    for step in (3, 4, 5):  # 4 is a save_steps checkpoint (a trajectory point): it stays
        (tmp_path / f"checkpoint-{step}").mkdir()
    state.global_step = 5
    callback.on_save(args, state, control)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-5"]
    # no checkpoint after the last step: the stage is about to finish anyway
    control.should_save = False
    state.global_step, now[0] = 10, 1000.0
    callback.on_step_end(args, state, control)
    assert not control.should_save


def test_a_checkpoint_cut_short_is_not_resumed_from(tmp_path):
    """A kill during a save: the newest checkpoint's state file is missing or cut; the one before counts."""
    from clinic.methods.checkpoints import resumable_checkpoint

    for step, state in ((4, '{"global_step": 4}'), (6, '{"global_st'), (8, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in ("optimizer.pt", "scheduler.pt"):
            (folder / name).write_text("x")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert resumable_checkpoint(tmp_path).name == "checkpoint-4"


def test_the_runner_leaves_a_resumable_training_stage_to_run_train(tmp_path):
    from types import SimpleNamespace

    from clinic.experiment.runner import _clear_partials

    def staged(kind, name, resumable):
        folder = tmp_path / f".{kind}-{name}.partial-0123abcd"
        ckpt = folder / "checkpoints" / "checkpoint-7"
        ckpt.mkdir(parents=True)
        for file in ("optimizer.pt", "scheduler.pt", "trainer_state.json")[: 3 if resumable else 2]:
            (ckpt / file).write_text("{}")
        return folder

    cases = {("align", True): True, ("finetune", True): True, ("align", False): False, ("evaluate", True): False}
    for (kind, resumable), kept in cases.items():
        folder = staged(kind, f"x{int(resumable)}", resumable)
        _clear_partials(tmp_path, SimpleNamespace(kind=kind, dirname=folder.name[1:].split(".partial-")[0]))
        assert folder.exists() == kept, (kind, resumable)
