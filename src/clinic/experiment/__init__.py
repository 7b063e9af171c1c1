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

Resuming: every stage runs through :func:`clinic.stages.execute`, which writes through
:class:`clinic.rundir.RunDir` (staging folder, renamed into place when complete, ``DONE`` last).
A killed runner (even ``kill -9``) leaves at most a ``.<stage>.partial-*`` folder: the next run
deletes it and re-runs that stage, except a training stage's with a checkpoint (written every
``CLINIC_CHECKPOINT_MINUTES``, default 10), from which the stage resumes (clinic.methods.checkpoints;
a resumed SFT stage ends with the same weights as an uninterrupted one, tested). Finished stages
are skipped.

One module per concern:

- :mod:`.spec`: reading and checking the experiment file (:class:`~.spec.Experiment`,
  :func:`~.spec.parse_yaml`, the allowed keys of each block);
- :mod:`.entries`: the values an experiment file names (methods with options, folder-safe names);
- :mod:`.plan`: the expansion into :class:`~.plan.Stage` objects and their hashes;
- :mod:`.runner`: running and resuming (:func:`~.runner.run_experiment`, stage locks, ``plan.json``);
- :mod:`.estimate`: what the stages still to run will cost, at the pace of the store's finished
  stages and of any folder of them (``clinic run --dry-run [--pace results]``);
- :mod:`.blocks`: the curate, align, finetune and execution blocks as dataclasses;
- :mod:`.attacks`: the adaptive attacker's spaces and budgeted searches;
- :mod:`.demo`: ``clinic demo`` as a built-in experiment.
"""

from __future__ import annotations

from .entries import MethodEntry, check_name
from .plan import Stage, check_sink
from .runner import is_done, run_experiment, run_stage, stage_path, write_plan
from .spec import Experiment, parse_yaml

__all__ = ["Experiment", "MethodEntry", "Stage", "check_name", "check_sink", "is_done", "parse_yaml",
           "run_experiment", "run_stage", "stage_path", "write_plan"]
