"""Multi-process training: the engine a run is under and which methods it can run (the model
inside an engine wrapper and the collectives the methods use are model-level:
:mod:`clinic.modeling.parallel`).

Engines (``accelerate launch`` picks one; a plain ``clinic`` call is ``single``):

- ``single``: one process (CPU or one GPU); every method runs;
- ``ddp``: data parallel, every process holds the whole model (``--multi_gpu``, or several CPU
  processes with ``ACCELERATE_USE_CPU=true``);
- ``fsdp``: PyTorch FSDP, parameters sharded over processes;
- ``zero0`` ... ``zero3``: DeepSpeed ZeRO stage 0-3 (3 shards the parameters).

What the methods rely on, and so where they can run (``MethodSpec.engines``; the table is in
``docs/multi-gpu.md``): every custom step calls the wrapped model's backward exactly once per
micro-batch (intermediate passes use ``torch.autograd.grad`` on the unwrapped model, so they
neither touch ``.grad`` nor trigger DDP's all-reduce or DeepSpeed's gradient hooks; what must be
global across processes is averaged with :func:`clinic.modeling.parallel.average_`). DeepSpeed steps its optimizer inside
that backward, so a method with a second backward (Surgery's separate probe backward) or with
per-step changes of the trainable set (T-Vaccine) is DDP-only. Forward hooks on attention
modules, in-place weight perturbations and proximal terms need whole (unsharded) parameters:
no FSDP, no ZeRO-3.
"""

from __future__ import annotations

import atexit
import functools
import json
import os


from ..errors import ClinicError

ENGINES = ("ddp", "fsdp", "zero0", "zero1", "zero2", "zero3")
# the engines that keep whole parameters on every process and allow one backward per step: where
# the methods run that perturb weights or activations or read whole weights (Vaccine, Booster, ...)
WHOLE_WEIGHT_ENGINES = ("ddp", "zero0", "zero1", "zero2")
ENGINE_LABELS = {
    "single": "a single process",
    "ddp": "DDP (data parallel)",
    "fsdp": "FSDP (sharded parameters)",
    "zero0": "DeepSpeed ZeRO-0",
    "zero1": "DeepSpeed ZeRO-1",
    "zero2": "DeepSpeed ZeRO-2",
    "zero3": "DeepSpeed ZeRO-3 (sharded parameters)",
}
_WHY = {
    "fsdp": "it reads or perturbs whole weights or layer activations outside the wrapped forward, "
            "which FSDP's parameter sharding does not allow",
    "zero3": "it reads or perturbs whole weights or layer activations outside the wrapped forward, "
             "which ZeRO-3's parameter sharding does not allow",
}
_WHY_DEEPSPEED = ("DeepSpeed steps the optimizer inside backward, and this method needs a second backward pass "
                  "or changes its trainable parameters from step to step")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _zero_stage_from_env() -> str:
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    config = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if stage is None and config and os.path.exists(config):
        try:
            stage = str(json.loads(open(config).read()).get("zero_optimization", {}).get("stage", 0))
        except (OSError, ValueError):
            stage = None
    return f"zero{stage}" if stage in ("0", "1", "2", "3") else "zero3"  # unknown: assume the strictest


def detect_engine(state=None) -> str:
    """The engine of this process: from an accelerate state (a Trainer's ``accelerator.state``),
    or, without one (before any Trainer exists), from what the launcher exported."""
    from accelerate.utils import DistributedType

    if state is None:  # `accelerate launch` / torchrun environment variables
        if _flag("ACCELERATE_USE_DEEPSPEED"):
            return _zero_stage_from_env()
        if _flag("ACCELERATE_USE_FSDP"):
            return "fsdp"
        return "ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"
    kind = state.distributed_type
    if kind == DistributedType.DEEPSPEED:
        plugin = getattr(state, "deepspeed_plugin", None)
        stage = getattr(plugin, "zero_stage", None)
        return f"zero{stage}" if stage in (0, 1, 2, 3) else "zero3"
    if kind == DistributedType.FSDP:
        return "fsdp"
    if kind == DistributedType.NO or state.num_processes <= 1:
        return "single"
    if str(kind.value).startswith("MULTI_"):
        return "ddp"
    return str(kind.value).lower()  # XLA, MEGATRON_LM...: no method declares them


def check_engine(method: str, engines: tuple[str, ...], engine: str | None = None) -> str:
    """Raise a :class:`ClinicError` unless ``method`` (supporting ``engines``) can run under
    ``engine`` (default: the detected one). A single process is always fine."""
    engine = engine or detect_engine()
    if engine == "single" or engine in engines:
        return engine
    why = _WHY.get(engine, _WHY_DEEPSPEED if engine.startswith("zero") else "it was never checked there")
    runs_on = ", ".join(ENGINE_LABELS.get(e, e) for e in ("single", *engines))
    raise ClinicError(
        f"method {method!r} cannot run under {ENGINE_LABELS.get(engine, engine)}: {why}; it runs on: {runs_on} "
        f"(see docs/multi-gpu.md)"
    )


def check_process_group() -> None:
    """Raise a :class:`ClinicError` when the launcher started several processes but accelerate
    does not distribute the work over them: each would train alone on all the data (N copies of
    a one-process run, no sharding, no gradient sync). It happens when ``accelerate launch
    --num_processes N`` (``--multi_gpu``, FSDP or DeepSpeed) finds no GPU and is not told to use
    the CPU. Call it after accelerate's state exists (``TrainConfig.sft_config`` creates it)."""
    from accelerate import PartialState

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and PartialState().num_processes != launched:
        raise ClinicError(
            f"launched as {launched} processes, but accelerate runs each one alone (no GPU found?), so every "
            "process would train on all the data; on CPU set ACCELERATE_USE_CPU=true (gloo), or launch one process"
        )


@functools.cache  # once per process, however many runs it makes
def destroy_process_group_at_exit() -> None:
    """Destroy the launcher's process group when the interpreter exits. Left to interpreter
    teardown, gloo's threads may outlive it: a multi-process run that had finished and written
    its run directory then aborted with "terminate called without an active exception" (exit -6;
    seen once in six CI runs of tests/test_ddp.py). A single process has no group: nothing to do."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        atexit.register(PartialState().destroy_process_group)
