"""What a plan's unfinished stages will cost, at the pace of the finished stages in its store.

``clinic run FILE --dry-run`` prints it beside each stage still to run, and a total, so a sweep can
be sized before it starts (the protocol issue asks for each cell's cost first). The pace is
measured, not assumed: the finished stages in the store that do the same kind of work (a *peer*)
give the seconds, their median:

- a training stage (align, finetune): seconds per optimizer step of peers with the same kind,
  method, batch size, sequence length, full or LoRA training, gradient checkpointing and the
  method's settings that change a step's cost (``"pace"`` in a field's metadata: T-Vaccine's
  active layers; without such a peer, the method's other settings, named in the basis), times
  this stage's steps (``max_steps``, or epochs × ⌈rows / batch⌉ / gradient accumulation, rows
  being the data's ``n`` plus the helpful rows, or a curated subset's size plus them);
- an evaluation: seconds of peers with the same numbers of prompts, task rows and new tokens;
- a curation: seconds of peers with the same selector and number of candidates;
- a repair: seconds of peers with the same method.

A new machine's store is empty: ``--pace DIR`` adds the finished stages under DIR (the committed
``results/`` keeps each published stage's config and metrics).

A peer of another model (a first Gemma run paced by SmolLM2's stages) is scaled by the ratio of
the two models' parameters, read from their safetensors headers when both are on this machine
(:func:`cost_ratio`; the summary names the factor, or says a peer went unscaled). A stage without
a finished peer (a sink analysis, or the first of its kind) is left out of the total and named. Peers ran under whatever else shared the machine (one thread beside another
job, or alone): the estimate repeats that pace, it does not correct for it, so read it as the
order of magnitude it is; several runners sharing a store overlap their stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .plan import Stage

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: a store holds hundreds of stages


def committed_results() -> tuple[Path, ...]:
    """The folders whose finished stages pace a dry run by default: ``results/`` of the current
    folder and of the repository clinic runs from (a fresh clone's committed results, so that a
    newcomer's first ``--dry-run`` estimates from measured stages rather than saying 0 s)."""
    found = []
    for candidate in (Path.cwd() / "results", Path(__file__).resolve().parents[3] / "results"):
        if candidate.is_dir() and candidate.resolve() not in [f.resolve() for f in found]:
            found.append(candidate)
    return tuple(found)


def model_of(config: dict) -> str | None:
    """The base model a stage config names (a planned stage's ``model``, a finished one's
    ``model.base``)."""
    model = config.get("model")
    if isinstance(model, dict):
        model = model.get("base")
    return model if isinstance(model, str) else None


class Pace(dict):
    """``{peer key: [seconds per unit]}``; ``scaled``: for each other model whose stages pace this
    one, the factor its times were multiplied by (None: not scaled, its size unknown here)."""

    def __init__(self):
        super().__init__()
        self.scaled: dict[str, float | None] = {}


def _peer(folder: Path) -> tuple[tuple, float, str, str | None] | None:
    """(peer key, seconds per unit, device, model) of a finished stage folder in the store, None
    when unknown: the stage's kind (its config.yaml's ``stage``) says what its peers are; the
    device is the one its record names (``execution.device``), the CPU for records older than that."""
    from ..stages import STAGE_KINDS

    try:
        config = yaml.load((folder / "config.yaml").read_text(), Loader=_LOADER) or {}
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    kind = STAGE_KINDS.get(config.get("stage"), None) if isinstance(config.get("stage"), str) else None
    found = kind.peer(config, metrics) if kind is not None else None
    if found is None:
        return None
    device = str(((config.get("execution") or {}).get("device")) or "cpu").split(":")[0]
    return found[0], found[1], device, model_of(config)


def cost_ratio(model: str, peer_model: str) -> float | None:
    """How much slower a stage of ``model`` runs than the same stage of ``peer_model``: the ratio
    of their parameters (tied embeddings once: the forward's multiply-adds per token, output
    projection included, are about the parameter count), None when either size is unknown here."""
    from ..modeling.models import parameter_count

    mine, theirs = parameter_count(model), parameter_count(peer_model)
    return mine / theirs if mine and theirs else None


def store_pace(store: Path, elsewhere: tuple = (), device: str = "cpu", model: str | None = None) -> Pace:
    """``{peer key: [seconds per unit of each finished peer]}`` over a store's finished stages and
    those at any depth under the folders ``elsewhere`` (a committed results folder keeps each
    stage's config and metrics), measured on ``device`` (cpu, cuda, mps). A stage found twice (the
    same folder name) counts once. With ``model``, a peer of another model is scaled by
    :func:`cost_ratio` (``pace.scaled`` says by how much; unscaled when a size is unknown)."""
    pace = Pace()
    folders = {done.parent.name: done.parent for done in sorted(Path(store).glob("*/DONE"))}
    for root in elsewhere:
        for done in sorted(Path(root).glob("**/DONE")):
            folders.setdefault(done.parent.name, done.parent)
    for folder in folders.values():
        found = _peer(folder)
        if found is None or found[2] != device:
            continue
        seconds, peer_model = found[1], found[3]
        if model and peer_model and peer_model != model:
            if peer_model not in pace.scaled:
                pace.scaled[peer_model] = cost_ratio(model, peer_model)
            seconds *= pace.scaled[peer_model] or 1.0
        pace.setdefault(found[0], []).append(seconds)
    return pace


def stage_estimate(stage: Stage, store: Path, pace: dict) -> dict | None:
    """``{seconds, basis}`` of one stage, None without a finished peer (or unknown rows): its
    kind's ``cost``."""
    from ..stages import get_stage_kind

    return get_stage_kind(stage.kind).cost(stage, Path(store), pace)


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_estimate(stages: list[Stage], store: Path, done, elsewhere: tuple = (), workers: int = 1,
                  device: str = "cpu") -> tuple[dict, str]:
    """``({stage dirname: estimate or None}, summary)`` for the stages not ``done``; the pace
    from the finished stages (on ``device``) in the store and under the folders ``elsewhere``;
    with ``workers`` > 1 also the wall time of that many stages at once (each starts when its parent
    has finished: a list schedule in plan order)."""
    todo = [s for s in stages if not done(s)]
    models = {model_of(s.config) for s in todo} - {None}
    # a store not made yet has no finished stage; one model to run: other models' peers are scaled to it
    pace = store_pace(store, elsewhere, device, next(iter(models)) if len(models) == 1 else None)
    found = {s.dirname: stage_estimate(s, Path(store), pace) for s in todo}
    known = [e["seconds"] for e in found.values() if e]
    # a training stage is named with its method: which method lacks a peer is what one needs to know
    unknown = sorted({f"{s.kind} {s.config['method']}" if "method" in s.config else s.kind
                      for s in todo if found[s.dirname] is None})
    where = "the store" + "".join(f" and {Path(e)}" for e in elsewhere)
    summary = (f"estimate: {duration(sum(known))} for {len(known)} of {len(todo)} stages still to run, at the pace of "
               f"the finished stages in {where} on the {device.upper() if device != 'cpu' else 'CPU'} (one runner")
    summary += f"; {workers} at once: {duration(schedule(todo, found, workers))})" if workers > 1 else ")"
    if unknown:
        summary += f"; without a finished peer: {len(todo) - len(known)} ({', '.join(unknown)})"
    if pace.scaled:
        summary += "; " + "; ".join(
            f"{peer}'s stages among the peers, times × {ratio:.2f} (parameters)" if ratio else
            f"{peer}'s stages among the peers, unscaled (a model's size is unknown until it is on this machine)"
            for peer, ratio in sorted(pace.scaled.items()))
    if device != "cpu":
        cpu = store_pace(store, elsewhere, "cpu")
        kinds = sorted({s.kind for s in todo if found[s.dirname] is None and stage_estimate(s, Path(store), cpu)})
        if kinds:
            summary += f"; no {device.upper()} timing yet for {', '.join(kinds)} (only CPU ones)"
    return found, summary


def schedule(stages: list[Stage], found: dict, workers: int) -> float:
    """The wall time of ``stages`` on ``workers`` at once, as the executors run them: whenever a
    worker is free, it takes the first stage in plan order whose parent has finished (a parent
    outside ``stages`` is done already; an unknown cost counts 0)."""
    import heapq

    todo = {s.dirname for s in stages}
    ends: dict[str, float] = {}
    running: list[tuple[float, str]] = []
    pending = list(stages)
    now = 0.0
    while pending or running:
        started = True
        while started and len(running) < max(1, workers):
            started = False
            for stage in pending:
                parent = stage.parent.dirname if stage.parent is not None else None
                if parent is None or parent not in todo or ends.get(parent, float("inf")) <= now:
                    seconds = (found.get(stage.dirname) or {}).get("seconds") or 0.0
                    heapq.heappush(running, (now + seconds, stage.dirname))
                    pending.remove(stage)
                    started = True
                    break
        if not running:
            break  # nothing can start: a parent that never runs
        now, dirname = heapq.heappop(running)
        ends[dirname] = now
    return max(ends.values(), default=0.0)
