"""The stage contract: a stage kind is registered once, with its settings dataclass and its run
function, and every stage of every kind runs through the one :func:`execute`.

A kind declares (:class:`StageKind`):

- ``config``: the settings dataclass (its fields are the command's options and the keys the
  experiment file hashes);
- ``model``: what the stage reads as its model: ``"model"`` (any model or run directory),
  ``"trained"`` (a model to train on: an evaluation run is refused), ``"none"`` (the settings
  name what the stage reads);
- ``inputs(ctx)``: more folders the stage reads (an output must not replace them);
- ``prepare(ctx)``: every check and every read that can fail, before anything is written;
- ``run(ctx)``: the work, writing into ``ctx.run`` (a :class:`~clinic.rundir.RunDir`);
- ``from_plan(plan_stage, parent_dir, model)``: the settings object and model reference of a
  planned stage (the experiment runner);
- ``peer(config_yaml, metrics)`` and ``cost(plan_stage, store, pace)``: the estimator's view of a
  finished stage and of one still to run (``clinic run --dry-run``);
- ``rows(plan_stage, store)``: for a ``subset`` stage, how many rows it keeps (a training
  stage after it is costed by them);
- ``role``: what the stage leaves behind (``model``, ``measurement``, ``analysis``, ``subset``,
  ``export``: a model folder for other tools),
  which is how the report and the runner tell stages apart without naming kinds.

:func:`execute` resolves the model once, checks the output once and opens the run directory
once; the CLI commands, the experiment runner and the demo all call it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ClinicError
from ..registry import Registry

ROLES = ("model", "measurement", "analysis", "subset", "export")
MODEL_INPUTS = ("model", "trained", "none")


@dataclass
class StageContext:
    """What one execution of a stage knows: its kind and settings, the model reference as given
    and resolved, the output, the folders it reads, and what ``prepare`` found (``state``)."""

    kind: StageKind
    config: Any
    model: str | None
    output: Path
    overwrite: bool = False
    chain: Any = None  # the resolved ModelChain (None for kinds that name their own inputs)
    inputs: tuple = ()
    options: dict = field(default_factory=dict)  # execution-only extras: judges, callbacks, progress, device
    state: dict = field(default_factory=dict)
    run: Any = None  # the open RunDir during run()
    run_dir_options: dict = field(default_factory=dict)  # adopt / keep_on_interrupt (training resumes)


def _none(*_args, **_kwargs):
    return None


@dataclass(frozen=True)
class StageKind:
    name: str
    config: type
    run: Callable[[StageContext], None]
    summary: str
    role: str = "model"
    model: str = "model"
    inputs: Callable[[StageContext], tuple] = lambda ctx: ()
    prepare: Callable[[StageContext], None] = _none
    from_plan: Callable | None = None
    peer: Callable[[dict, dict], tuple | None] = _none
    cost: Callable = _none
    resumable: bool = False  # a stopped run's staging folder may hold a checkpoint to resume from
    rows: Callable = _none  # role "subset": the rows a planned or finished stage keeps (stage, store) -> int
    metrics_file: str = "metrics.json"  # what the report reads of a finished stage
    seconds: str | None = None  # the metric that holds the stage's compute time, for the report's cost columns

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"stage kind {self.name}: role must be one of {ROLES}")
        if self.model not in MODEL_INPUTS:
            raise ValueError(f"stage kind {self.name}: model must be one of {MODEL_INPUTS}")


#: Every stage kind; importing a module of :mod:`clinic.stages` registers its own.
STAGE_KINDS = Registry("stage kind", package="clinic.stages")


def register_stage(kind: StageKind, order: float = float("inf")) -> StageKind:
    """Add a stage kind (one call per kind, in the kind's module)."""
    STAGE_KINDS.register(kind.name, kind, order=order)
    return kind


def get_stage_kind(name: str) -> StageKind:
    return STAGE_KINDS.get(name)


def role_of(name: str) -> str:
    """The role of the stage kind ``name`` (how the report and the runner tell stages apart)."""
    return get_stage_kind(name).role


def execute(kind: str | StageKind, config, *, output: str | Path, model: str | None = None,
            overwrite: bool = False, **options) -> Path:
    """Run one stage: resolve the model once, check the output once, prepare (every check that
    can fail), then open the run directory once and run. Returns the finished run directory.
    ``options`` are execution-only extras the kind reads (judges, callbacks, progress)."""
    from ..modeling.chain import chain_inputs, check_chain, resolve_ref
    from ..rundir import RunDir, check_output_dir

    spec = kind if isinstance(kind, StageKind) else get_stage_kind(kind)
    if not isinstance(config, spec.config):
        raise TypeError(f"stage {spec.name} takes a {spec.config.__name__}, got {type(config).__name__}")
    ctx = StageContext(spec, config, model, Path(output), overwrite, options=options)
    if spec.model != "none":
        if model is None:
            raise ClinicError(f"the {spec.name} stage needs a model")
        ctx.chain = resolve_ref(model, train=spec.model == "trained")
        ctx.inputs = chain_inputs(model, ctx.chain)
    ctx.inputs += tuple(spec.inputs(ctx))
    ctx.output = check_output_dir(output, overwrite, ctx.inputs)
    if ctx.chain is not None:
        check_chain(ctx.chain)
    spec.prepare(ctx)
    lock_held = bool(options.get("lock_held"))  # the runner holds the stage's lock: adopt any host's partial
    with RunDir(ctx.output, overwrite, ctx.inputs, checked=True, lock_held=lock_held, **ctx.run_dir_options) as run:
        ctx.run = run
        spec.run(ctx)
    return run.final
