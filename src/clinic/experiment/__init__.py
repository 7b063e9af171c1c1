"""``clinic run experiment.yaml``: a grid of stages, shared by hash, resumable, deterministic.

An experiment file names a model, the alignment methods, one or more fine-tuning blocks (each a
grid of methods × tasks × poison ratios), the evaluation and the sink analysis; seeds multiply
everything. The runner expands it into stages::

    [curate] -> align (per method, seed) -> finetune (per aligned model × method × task × p)
             -> [repair (per fine-tuned model × repair method)]
             -> evaluate (base, aligned, fine-tuned and repaired models) -> sink (per fine-tuned model)

Each stage's resolved config (which includes its parent's hash, never a path) is hashed; the
stage lives in ``<store>/<kind>-<label>-<hash>``. Identical stages are therefore shared: ten
fine-tuning runs on one aligned model align it once, and two experiment files pointing at the
same ``--store`` share their common stages.

Resuming: every stage writes through :class:`clinic.rundir.RunDir` (staging folder, renamed into
place when complete, ``DONE`` last). A killed runner (even ``kill -9``) leaves at most a
``.<stage>.partial-*`` folder, which the next run deletes before re-running that stage from its
start; finished stages are skipped. Stages restart from scratch rather than from a training
checkpoint: on CPU a stage is deterministic, so a resumed experiment gives the same metrics as an
uninterrupted one (tested).

One module per concern:

- :mod:`.spec`: reading and checking the experiment file (:class:`~.spec.Experiment`,
  :func:`~.spec.parse_yaml`, the allowed keys of each block);
- :mod:`.entries`: the values an experiment file names (methods with options, folder-safe names);
- :mod:`.plan`: the expansion into :class:`~.plan.Stage` objects and their hashes;
- :mod:`.runner`: running and resuming (:func:`~.runner.run_experiment`, stage locks, ``plan.json``);
- :mod:`.estimate`: what the stages still to run will cost, at the pace of the store's finished
  stages and of any folder of them (``clinic run --dry-run [--pace results]``).
"""

from __future__ import annotations

from .entries import MethodEntry, check_name
from .plan import Stage, check_sink
from .runner import is_done, run_experiment, run_stage, stage_path, write_plan
from .spec import Experiment, parse_yaml

__all__ = ["Experiment", "MethodEntry", "Stage", "check_name", "check_sink", "is_done", "parse_yaml",
           "run_experiment", "run_stage", "stage_path", "write_plan"]
