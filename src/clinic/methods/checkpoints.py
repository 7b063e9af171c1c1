"""A training stage's checkpoints: resumable ones, so that a killed alignment or fine-tune
continues where it stopped, and no pickle left in a finished run directory.

A training stage writes into a hidden staging folder (:class:`clinic.rundir.RunDir`) that a kill
leaves behind. Every ``CLINIC_CHECKPOINT_MINUTES`` (default 10, :func:`clinic.settings.checkpoint_minutes`)
:class:`ResumeCheckpoints` makes Trainer save a full checkpoint there (weights, optimizer,
scheduler, RNG states, trainer state); only the newest is kept. The next run of the same stage
adopts the folder when its recorded configuration and data are exactly this run's
(:func:`clinic.stages.train.run_train`) and Trainer resumes from that checkpoint: the optimizer
state, the learning-rate schedule, the RNG states and the position in the data are restored,
so a plain SFT stage continues as if it had not stopped (tested: the same weights as an
uninterrupted run).

What is not restored: state a method keeps in its trainer object between steps (Lisa's active
layers, T-Vaccine's layer scores, Surgery's probe generator, Booster's and RepNoise's extra data
iterators) starts afresh at the resumed step, so such a stage is a slightly different run than an
uninterrupted one. The stage records it (``resumed_from_step`` in its ``metrics.json``), and the
cost is at most the minutes since the last checkpoint.

The checkpoints made only for resuming are removed when the stage finishes; those asked for by
``save_steps`` (a trajectory for the sink analysis) stay, without their pickled optimizer and RNG
files (no pickle stays in a finished run directory).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import yaml
from transformers import TrainerCallback

from ..rundir import plain

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# what Trainer needs besides the weights to continue a run exactly
RESUME_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def checkpoint_step(path: Path) -> int | None:
    """The step of a ``checkpoint-N`` folder (``None`` for any other name)."""
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else None


def checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``folder``, by step."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None),
                  key=checkpoint_step)


def _complete(path: Path) -> bool:
    """Trainer writes ``trainer_state.json`` last, after the weights, optimizer, scheduler and RNG
    states: a checkpoint whose state file is there and parses was written whole (a kill during a
    save leaves the previous checkpoint, pruned only after the next one is complete)."""
    if not all((path / name).is_file() for name in RESUME_FILES):
        return False
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def resumable_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint in ``folder`` that holds everything a resume needs, or ``None``."""
    complete = [p for p in checkpoints(folder) if _complete(p)]
    return complete[-1] if complete else None


def is_resume_only(path: Path, save_steps: int) -> bool:
    """A checkpoint saved only for resuming: not one of the ``save_steps`` trajectory."""
    step = checkpoint_step(path)
    return step is not None and not (save_steps > 0 and step % save_steps == 0)


def prune_resume_checkpoints(folder: Path, save_steps: int, keep: Path | None = None) -> None:
    """Remove the resume-only checkpoints of ``folder`` (but ``keep``)."""
    for path in checkpoints(folder):
        if path != keep and is_resume_only(path, save_steps):
            shutil.rmtree(path, ignore_errors=True)


def is_same_stage(stale: Path, record: dict, manifest: dict) -> bool:
    """Whether a stopped run's staging folder is this very stage, with a checkpoint to resume
    from: the same recorded configuration (``config.yaml``: model chain, training settings, method
    options, data, seed, package versions) and the same training rows (``data_indices.json``)."""
    try:
        recorded = yaml.safe_load((stale / "config.yaml").read_text())
        indices = json.loads((stale / "data_indices.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    if isinstance(recorded, dict):
        recorded.pop("execution", None)  # where it ran is no part of what it computes
    # compared as the run directory's writers store them
    same = (recorded == yaml.safe_load(yaml.safe_dump(plain(record), sort_keys=False))
            and indices == json.loads(json.dumps(plain(manifest))))
    return same and resumable_checkpoint(stale / "checkpoints") is not None


class ResumeCheckpoints(TrainerCallback):
    """Ask Trainer for a full checkpoint every ``minutes`` of training; keep only the newest."""

    def __init__(self, minutes: float, save_steps: int = 0, clock=time.monotonic):
        self.seconds = 60.0 * minutes
        self.save_steps = save_steps
        self.clock = clock
        self.last = clock()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        if self.clock() - self.last >= self.seconds and state.global_step < state.max_steps:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        self.last = self.clock()
        newest = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        prune_resume_checkpoints(Path(args.output_dir), self.save_steps, keep=newest)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")


def drop_pickles(folder: Path) -> None:
    """No pickle stays in a run directory: Trainer's checkpoints hold ``training_args.bin`` (the
    pickled TrainingArguments) and may hold RNG states; the weights are safetensors and the
    state is JSON, which is all a later stage or ``clinic sink`` reads."""
    for file in folder.rglob("*") if folder.is_dir() else ():
        if file.suffix in PICKLE_SUFFIXES and file.is_file():
            file.unlink()
