"""What a plan's unfinished stages will cost, at the pace of the finished stages in its store.

``clinic run FILE --dry-run`` prints it beside each stage still to run, and a total, so a sweep can
be sized before it starts (the protocol issue asks for each cell's cost first). The pace is
measured, not assumed: the finished stages in the store that do the same kind of work (a *peer*)
give the seconds, their median:

- a training stage (align, finetune): seconds per optimizer step of peers with the same kind,
  method, batch size, sequence length, full or LoRA training and gradient checkpointing, times
  this stage's steps (``max_steps``, or epochs × ⌈rows / batch⌉ / gradient accumulation, rows
  being the data's ``n`` plus the helpful rows, or a curated subset's size plus them);
- an evaluation: seconds of peers with the same numbers of prompts, task rows and new tokens;
- a curation: seconds of peers with the same selector and number of candidates;
- a repair: seconds of peers with the same method.

A new machine's store is empty: ``--pace DIR`` adds the finished stages under DIR (the committed
``results/`` keeps each published stage's config and metrics).

A stage without a finished peer (a sink analysis, or the first of its kind) is left out of the
total and named. Peers ran under whatever else shared the machine (one thread beside another
job, or alone): the estimate repeats that pace, it does not correct for it, so read it as the
order of magnitude it is; several runners sharing a store overlap their stages.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import yaml

from .plan import Stage

TRAINING = ("align", "finetune")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: a store holds hundreds of stages


def _train_key(kind: str, method: str, train: dict) -> tuple:
    return (kind, method, train.get("batch_size"), train.get("max_length"), bool(train.get("full_ft")),
            bool(train.get("gradient_checkpointing")))


def _eval_key(cfg: dict) -> tuple:
    return ("evaluate", cfg.get("n_prompts"), cfg.get("n_task"), cfg.get("max_new_tokens"))


def _peer(folder: Path) -> tuple[tuple, float] | None:
    """(peer key, seconds per unit) of a finished stage folder in the store, None when unknown."""
    try:
        config = yaml.load((folder / "config.yaml").read_text(), Loader=_LOADER) or {}
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    kind = config.get("stage")
    if kind in TRAINING and metrics.get("steps") and metrics.get("train_seconds") is not None:
        return _train_key(kind, config.get("method"), config.get("train") or {}), metrics["train_seconds"] / metrics["steps"]
    if kind == "evaluate" and metrics.get("eval_seconds") is not None:
        return _eval_key(config.get("eval") or {}), metrics["eval_seconds"]
    if kind == "curate" and metrics.get("selector_seconds") is not None:
        cur = config.get("curate") or {}
        return ("curate", cur.get("selector"), cur.get("n_candidates")), metrics["selector_seconds"]
    if kind == "repair" and metrics.get("repair_seconds") is not None:
        return ("repair", config.get("method")), metrics["repair_seconds"]
    return None


def store_pace(store: Path, elsewhere: tuple = ()) -> dict:
    """``{peer key: [seconds per unit of each finished peer]}`` over a store's finished stages and
    those at any depth under the folders ``elsewhere`` (a committed results folder keeps each
    stage's config and metrics). A stage found twice (the same folder name) counts once."""
    pace: dict = {}
    folders = {done.parent.name: done.parent for done in sorted(Path(store).glob("*/DONE"))}
    for root in elsewhere:
        for done in sorted(Path(root).glob("**/DONE")):
            folders.setdefault(done.parent.name, done.parent)
    for folder in folders.values():
        found = _peer(folder)
        if found is not None:
            pace.setdefault(found[0], []).append(found[1])
    return pace


def _curated_size(curate: Stage, store: Path) -> int | None:
    metrics = store / curate.dirname / "metrics.json"
    if (store / curate.dirname / "DONE").exists() and metrics.exists():
        return json.loads(metrics.read_text())["k"]
    cfg = curate.config
    k = cfg.get("k") or (cfg.get("options") or {}).get("k")
    n = (cfg.get("options") or {}).get("n_candidates")
    return k if k else (max(1, round(cfg["ratio"] * n)) if n and cfg.get("ratio") else None)


def training_rows(stage: Stage, store: Path) -> int | None:
    """The rows a training stage trains on, from its config (and its curate parent's size)."""
    data = stage.config.get("data") or {}
    helpful = (data.get("helpful_n") or 0) if data.get("helpful") else 0
    if stage.kind == "align" and stage.parent is not None and stage.parent.kind == "curate":
        k = _curated_size(stage.parent, store)
        return None if k is None else k + helpful
    return None if data.get("n") is None else data["n"] + helpful


def training_steps(train: dict, rows: int) -> int:
    """Optimizer steps of a training run: ``max_steps`` when set, else epochs × batches per epoch."""
    if train.get("max_steps", -1) > 0:
        return train["max_steps"]
    per_epoch = max(1, math.ceil(math.ceil(rows / train["batch_size"]) / train.get("grad_accum", 1)))
    return int(train["epochs"] * per_epoch)


def _peers(peers: list) -> str:
    return f"{len(peers)} finished peer{'s' if len(peers) > 1 else ''}"


def stage_estimate(stage: Stage, store: Path, pace: dict) -> dict | None:
    """``{seconds, basis}`` of one stage, None without a finished peer (or unknown rows)."""
    cfg = stage.config
    if stage.kind in TRAINING:
        rows = training_rows(stage, store)
        peers = pace.get(_train_key(stage.kind, cfg.get("method"), cfg.get("train") or {}))
        if rows is None or not peers:
            return None
        steps = training_steps(cfg["train"], rows)
        per_step = statistics.median(peers)
        return {"seconds": steps * per_step, "basis": f"{steps} steps × {per_step:.1f} s/step, {_peers(peers)}"}
    if stage.kind == "evaluate":
        key = _eval_key(cfg)
    elif stage.kind == "curate":
        key = ("curate", cfg.get("selector"), (cfg.get("options") or {}).get("n_candidates"))
    elif stage.kind == "repair":
        key = ("repair", cfg.get("method"))
    else:
        return None
    peers = pace.get(key)
    if not peers:
        return None
    return {"seconds": statistics.median(peers), "basis": _peers(peers)}


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_estimate(stages: list[Stage], store: Path, done, elsewhere: tuple = ()) -> tuple[dict, str]:
    """``({stage dirname: estimate or None}, summary line)`` for the stages not ``done``; the pace
    from the store's finished stages and those under the folders ``elsewhere``."""
    pace = store_pace(store, elsewhere)  # a store not made yet has no finished stage
    todo = [s for s in stages if not done(s)]
    found = {s.dirname: stage_estimate(s, Path(store), pace) for s in todo}
    known = [e["seconds"] for e in found.values() if e]
    # a training stage is named with its method: which method lacks a peer is what one needs to know
    unknown = sorted({f"{s.kind} {s.config.get('method')}" if s.kind in TRAINING else s.kind
                      for s in todo if found[s.dirname] is None})
    where = "the store" + "".join(f" and {Path(e)}" for e in elsewhere)
    summary = (f"estimate: {duration(sum(known))} for {len(known)} of {len(todo)} stages still to run, at the pace of "
               f"the finished stages in {where} (one runner; several runners overlap)")
    if unknown:
        summary += f"; without a finished peer: {len(todo) - len(known)} ({', '.join(unknown)})"
    return found, summary
