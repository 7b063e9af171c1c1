"""The align and finetune stages: train a model with a registered method (:mod:`clinic.methods`).

The stage writes ``config.yaml`` (resolved, with package versions and seed), ``data_indices.json``,
the trained ``adapter/`` (LoRA) or ``model/`` (full fine-tuning), ``train_log.jsonl``,
``metrics.json`` and ``run.json`` (what a later stage needs to load the model), then ``DONE``.

Model hand-off (docs/reference/algorithms.md §6.4): a LoRA run saves its adapter; the next stage loads the base
model, merges every adapter of the chain in order, and adds a fresh LoRA. Full fine-tuning saves
the whole model, which becomes the next chain's base.
"""

from __future__ import annotations

import logging

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset

from ..data.formatting import training_row
from ..data.mixture import SELECTIONS, build_attack_set, check_mixture_args, take_qa
from ..data.sources import load_rows
from ..errors import ClinicError
from ..methods.checkpoints import (ResumeCheckpoints, checkpoint_step, drop_pickles, is_same_stage,
                                   prune_resume_checkpoints, resumable_checkpoint)
from ..modeling.training import TrainConfig
from ..methods.engines import check_engine, check_process_group, destroy_process_group_at_exit
from ..methods.registry import MethodSpec, get_method, method_config, pace_settings
from ..modeling.chain import ModelChain, load_chain
from ..modeling.device import peak_memory_mb
from ..modeling.models import attach_lora
from ..modeling.parallel import world_size
from ..rundir import RunDir
from ..settings import package_versions
from ..settings import checkpoint_minutes
from .base import StageContext, StageKind, execute, get_stage_kind, register_stage

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """The training data of a stage.

    align: ``source`` (a named QA dataset or file) and ``n`` samples (``None``: all), plus
    optionally ``helpful_n`` rows of a ``helpful`` instruction source mixed in (the
    Safety-Tuned-LLaMAs recipe: refusals alone teach a small model to refuse everything, so a
    benign fine-tune must unlearn refusing itself; helpful rows keep answering ordinary requests).
    finetune: ``task`` + ``n`` + ``poison_ratio`` builds the attack set; or ``source`` (a user
    file of prompt/response rows, with ``columns``) is used as it is.
    """

    source: str | None = field(default=None, metadata={
        "help": "align: alignment data, a named QA dataset or a file (default refusals); finetune: a user file of "
                "prompt/response rows instead of --task"})
    task: str | None = field(default=None, metadata={"help": "benign task: sst2, agnews, gsm8k, alpaca"})
    n: int | None = field(default=None, metadata={"help": "number of samples (align: default all)"})
    poison_ratio: float = field(default=0.0, metadata={"help": "fraction p of harmful samples, in [0, 1]"})
    harmful_source: str = field(default="beavertails-harmful", metadata={"help": "source of the harmful samples"})
    selection: str = field(default="random", metadata={"help": "seeded random rows or the first n",
                                                       "choices": SELECTIONS})
    # the CLI gives the mapping as text (prompt=question,response=answer), read by data.sources.parse_columns
    columns: dict | None = field(default=None, metadata={
        "help": "column mapping for a user file, e.g. prompt=question,response=answer"})
    helpful: str | None = field(default=None, metadata={
        "help": "a helpful instruction dataset to mix into the alignment data (e.g. alpaca)"})
    helpful_n: int | None = field(default=None, metadata={"help": "how many --helpful rows to mix in"})


def check_data_spec(stage: str, data: DataConfig) -> None:
    """Refuse settings that would be silently ignored (a mapping for data that has no columns to map)."""
    from ..data.sources import SOURCES

    if data.source is not None and not data.source.strip():
        raise ClinicError("--source is empty; name a dataset or a file")
    if stage == "finetune" and data.task and data.source:
        raise ClinicError("give either --task (the attack set) or --source FILE, not both")
    if data.columns and stage == "finetune" and data.task:
        raise ClinicError("--columns maps the columns of a --source file; it does not apply to --task")
    source = data.source or ("refusals" if stage == "align" else None)
    if (data.helpful is None) != (data.helpful_n is None):
        raise ClinicError("--helpful and --helpful-n go together: name the helpful dataset and how many of its rows to mix in")
    if data.helpful is not None and stage != "align":
        raise ClinicError("--helpful mixes helpful answers into alignment data; it does not apply to fine-tuning")
    if data.helpful_n is not None and (not isinstance(data.helpful_n, int) or data.helpful_n < 1):
        raise ClinicError(f"helpful_n must be a positive integer, got {data.helpful_n!r}")
    if data.helpful is not None and data.helpful == source:
        raise ClinicError(f"--helpful names the alignment data itself ({source!r}); name another dataset")
    if data.columns and source in SOURCES:
        raise ClinicError(f"--columns maps the columns of a user file; {source!r} is a named dataset with its own columns")


def _training_samples(stage: str, data: DataConfig, seed: int):
    """(samples, indices manifest) for a stage, validated before anything is written."""
    if stage == "finetune" and data.task:
        if data.n is None:
            raise ClinicError("fine-tuning on a task needs a sample count n")
        attack = build_attack_set(data.task, data.n, data.poison_ratio, seed, data.harmful_source, data.selection)
        return attack.samples, attack.manifest()
    source = data.source or ("refusals" if stage == "align" else None)
    if source is None:
        raise ClinicError("fine-tuning needs --task (with --n and --poison-ratio) or --source FILE")
    if data.n is not None:
        check_mixture_args(data.n, 0.0)
    if data.columns:
        from ..data.mixture import qa_sample

        rows = load_rows(source, kind="qa", columns=data.columns)
        if data.n is not None and data.n > len(rows):
            raise ClinicError(f"asked for {data.n} samples but {source} has only {len(rows)}")
        rows = rows[: data.n] if data.n is not None else rows
        return [qa_sample(r) for r in rows], {"n": len(rows), "indices": {source: list(range(len(rows)))}}
    selection = "first" if data.selection == "first" else "random"
    samples, idx = take_qa(source, data.n, seed, selection)
    indices = {source: idx}
    if data.helpful is not None:
        helpful, h_idx = take_qa(data.helpful, data.helpful_n, seed, selection)
        samples, indices = samples + helpful, {source: idx, data.helpful: h_idx}
    return samples, {"n": len(samples), "indices": indices}


def _extra_streams(spec: MethodSpec, cfg, seed: int) -> tuple[dict, dict]:
    streams, manifest = {}, {}
    for name, (source, size) in cfg.stream_specs().items():
        samples, idx = take_qa(source, size, seed, "first")
        streams[name] = samples
        manifest[name] = {"source": source, "indices": idx}
    return streams, manifest




@dataclass
class TrainStageConfig:
    """The settings of one align or finetune stage: the method and its options, the training
    settings and the data."""

    method: str = "sft"
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method_options: dict = field(default_factory=dict)


def _prepare(ctx: StageContext) -> None:
    """Every check before anything is written: the method and its options, the engine the
    launcher set up, the data (sampled here), and the training arguments (which start the process
    group under a launcher: the run directory needs it)."""
    stage, s = ctx.kind.name, ctx.config
    spec = get_method(s.method, stage)
    cfg = method_config(spec, **(s.method_options or {}))
    check_engine(spec.name, spec.engines)  # from the launcher's environment: refuse before loading anything
    check_data_spec(stage, s.data)
    samples, indices = _training_samples(stage, s.data, s.train.seed)
    streams, stream_manifest = _extra_streams(spec, cfg, s.train.seed)
    minutes = checkpoint_minutes()
    from ..modeling.device import resolve_device

    device = resolve_device(ctx.options.get("device"))  # Trainer places the model; "cpu" keeps it off a GPU
    on_cpu = {"use_cpu": True} if device == "cpu" and torch.cuda.is_available() else {}
    # a resumable checkpoint needs the optimizer, scheduler and RNG states besides the weights
    from ..modeling.training import report_to

    trackers = report_to(ctx.options.get("report_to"))  # where the losses are logged too: never hashed
    args = s.train.sft_config(str(ctx.output / "checkpoints"), save_only_model=minutes == 0,  # starts the process group
                              report_to=trackers, run_name=ctx.output.name, **on_cpu)
    check_process_group()
    destroy_process_group_at_exit()
    record = {"stage": stage, "method": s.method, "model": asdict(ctx.chain), "train": asdict(s.train),
              "method_options": asdict(cfg), "data": asdict(s.data), "seed": s.train.seed,
              "versions": package_versions()}
    # where it ran: never hashed, and left out of the resume check (a requeued job may land on another device)
    execution = {"device": "cuda" if torch.cuda.is_available() and device != "cpu" else device}
    manifest = {"train": indices, "streams": stream_manifest}
    if minutes > 0:
        ctx.run_dir_options = {"adopt": lambda stale: is_same_stage(stale, record, manifest),
                               "keep_on_interrupt": lambda path: resumable_checkpoint(path / "checkpoints") is not None}
    ctx.state.update(spec=spec, cfg=cfg, samples=samples, streams=streams, args=args, record=record,
                     manifest=manifest, minutes=minutes, execution=execution)


def _run(ctx: StageContext) -> None:
    s, st, run = ctx.config, ctx.state, ctx.run
    train, chain, args = s.train, ctx.chain, st["args"]
    args.output_dir = str(run.path / "checkpoints")
    resume_from = resumable_checkpoint(run.path / "checkpoints") if run.adopted else None
    if resume_from is not None:
        logger.warning(f"resuming {ctx.output.name} from step {checkpoint_step(resume_from)} "
              f"(the checkpoint of a stopped run, {run.adopted.name})")
    model_obj, tok = load_chain(chain)
    if train.prompt_style == "chat" and not getattr(tok, "chat_template", None):
        raise ClinicError(f"model {chain.base!r} has no chat template; use --prompt-style alpaca")
    fmt = train.prompt_format()
    if not train.full_ft:
        # the adapter's initial weights from the stage's seed: torch seeds its default generator
        # from the OS at start (2.13), so an unseeded draw differs from one process to the next
        torch.manual_seed(train.seed)
        model_obj = attach_lora(model_obj, train.lora())
    rows = [training_row(tok, fmt, x.instruction, x.input, x.output) for x in st["samples"]]
    run.write_yaml("config.yaml", {**st["record"], "execution": st["execution"]})
    run.write_json("data_indices.json", st["manifest"])
    callbacks = list(ctx.options.get("callbacks") or [])
    if st["minutes"] > 0:
        callbacks.append(ResumeCheckpoints(st["minutes"], train.save_steps))
    torch.manual_seed(train.seed)
    trainer = st["spec"].trainer(model=model_obj, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tok, method_config=st["cfg"], prompt_format=fmt,
                                 extra_data=st["streams"], callbacks=callbacks)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    seconds = time.perf_counter() - start
    run.write_jsonl("train_log.jsonl", trainer.state.log_history)
    _save_weights(trainer, run, "model" if train.full_ft else "adapter")
    if run.is_main:
        prune_resume_checkpoints(run.path / "checkpoints", train.save_steps)
        drop_pickles(run.path / "checkpoints")
    if train.full_ft:
        if run.is_main:
            tok.save_pretrained(run.path / "model")
        new_chain = ModelChain("model", [], asdict(fmt))  # relative: the run directory can move
    else:
        new_chain = ModelChain(chain.base, chain.adapters + ["adapter"], asdict(fmt))
    run.write_json("metrics.json", {
        "train_seconds": round(seconds, 2),
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "n_train": len(st["samples"]),
        "engine": trainer.engine,  # what accelerate ran: single, ddp, fsdp, zero0-3 (methods/engines.py)
        "processes": world_size(),
        # resumed: train_seconds counts this process's part only; method state kept
        # between steps restarted there (clinic.methods.checkpoints)
        **({"resumed_from_step": checkpoint_step(resume_from)} if resume_from is not None else {}),
    })
    run.write_json("run.json", {"stage": ctx.kind.name, "method": s.method, "model_chain": asdict(new_chain),
                                "prompt_format": asdict(fmt)})


def run_train(stage: str, *, model: str, method: str = "sft", train: TrainConfig, data: DataConfig,
              output: str | Path, method_options: dict | None = None, overwrite: bool = False,
              callbacks: list | None = None, **execution) -> Path:
    """Align or fine-tune ``model`` with ``method``; returns the finished run directory.
    ``execution``: ``device`` (never part of the stage's hash).

    Under ``accelerate launch`` / torchrun every process calls this; the main process writes."""
    settings = TrainStageConfig(method, train, data, dict(method_options or {}))
    return execute(stage, settings, output=output, model=model, overwrite=overwrite, callbacks=callbacks, **execution)


def _save_weights(trainer, run: RunDir, name: str) -> None:
    """The trained model (full) or adapter (LoRA) to ``run.path / name``, written once."""
    if trainer.engine in ("fsdp", "zero3"):  # sharded weights: every process takes part in gathering them
        trainer.save_model(str(run.path / name))
        if run.is_main:  # no pickle in a run directory (save_model adds the pickled TrainingArguments)
            (run.path / name / "training_args.bin").unlink(missing_ok=True)
    elif run.is_main:
        trainer.model.save_pretrained(run.path / name, safe_serialization=True)




# --------------------------------------------------------------------------------------------
# the experiment runner and the estimator


def _from_plan(stage, parent_dir: Path | None, model: str):
    """(settings, model reference) of a planned align or finetune stage. After a curate stage
    the curated subset replaces the alignment source (helpful rows, if any, are mixed in as
    without curation: Pharmacist curates the safety data) and the model is the experiment's."""
    cfg = stage.config
    ref = cfg.get("model") or (str(parent_dir) if parent_dir is not None else model)
    data = cfg["data"]
    if stage.kind == "align" and parent_dir is not None and get_stage_kind(stage.parent.kind).role == "subset":
        ref = model
        spec = DataConfig(source=str(parent_dir / "subset.jsonl"), n=None, helpful=data.get("helpful"),
                        helpful_n=data.get("helpful_n"))
    elif stage.kind == "align":
        spec = DataConfig(source=data["source"], n=data["n"], selection=data["selection"],
                        helpful=data.get("helpful"), helpful_n=data.get("helpful_n"))
    else:
        spec = DataConfig(**data)
    return TrainStageConfig(cfg["method"], TrainConfig(**cfg["train"]), spec, cfg["options"]), ref


def _train_key(kind: str, method: str, train: dict, options: dict | None) -> tuple:
    """A training stage's peer key: what sets the cost of one optimizer step, the method's own
    such settings last (:func:`clinic.methods.registry.pace_settings`: T-Vaccine trains 8 or 30
    layers a step)."""
    return (kind, method, train.get("batch_size"), train.get("max_length"), bool(train.get("full_ft")),
            bool(train.get("gradient_checkpointing")), pace_settings(method, options))


def _peer(config: dict, metrics: dict):
    """(peer key, seconds per optimizer step) of a finished training stage (its config.yaml names
    every method setting under ``method_options``)."""
    if metrics.get("steps") and metrics.get("train_seconds") is not None:
        return (_train_key(config.get("stage"), config.get("method"), config.get("train") or {},
                           config.get("method_options")),
                metrics["train_seconds"] / metrics["steps"])
    return None


def training_rows(stage, store: Path) -> int | None:
    """The rows a training stage trains on, from its config (and its curate parent's size)."""
    data = stage.config.get("data") or {}
    helpful = (data.get("helpful_n") or 0) if data.get("helpful") else 0
    if stage.parent is not None and get_stage_kind(stage.parent.kind).role == "subset":
        k = get_stage_kind(stage.parent.kind).rows(stage.parent, store)
        return None if k is None else k + helpful
    return None if data.get("n") is None else data["n"] + helpful


def training_steps(train: dict, rows: int) -> int:
    """Optimizer steps of a training run: ``max_steps`` when set, else epochs × batches per epoch."""
    if train.get("max_steps", -1) > 0:
        return train["max_steps"]
    per_epoch = max(1, math.ceil(math.ceil(rows / train["batch_size"]) / train.get("grad_accum", 1)))
    return int(train["epochs"] * per_epoch)


def _cost(stage, store: Path, pace: dict):
    """``{seconds, basis}`` of a training stage still to run: its steps at the median pace of
    finished peers (same kind, method, batch, length, LoRA or full, checkpointing, and the method's
    settings that change a step's cost); without such a peer, at the pace of the method's other
    settings, the basis saying so (a first 30-layer T-Vaccine paced by 8-layer ones is low)."""
    cfg = stage.config
    rows = training_rows(stage, store)
    key = _train_key(stage.kind, cfg.get("method"), cfg.get("train") or {}, cfg.get("options"))
    peers, note = pace.get(key), ""
    if not peers and key[-1]:
        others = {other[-1]: seconds for other, seconds in pace.items() if other[:-1] == key[:-1]}
        peers = [s for seconds in others.values() for s in seconds]
        differ = [name for i, (name, value) in enumerate(key[-1]) if any(o[i][1] != value for o in others)]
        note = f" with another {' or '.join(differ)} (a step costs more or less)"
    if rows is None or not peers:
        return None
    steps = training_steps(cfg["train"], rows)
    per_step = statistics.median(peers)
    return {"seconds": steps * per_step, "basis": f"{steps} steps × {per_step:.1f} s/step, "
            f"{len(peers)} finished peer{'s' if len(peers) > 1 else ''}{note}"}


for _order, _name, _summary in ((1, "align", "safety-align a model with a registered method"),
                                (2, "finetune", "fine-tune a model on user data (the attack) with a registered method")):
    register_stage(StageKind(_name, TrainStageConfig, _run, _summary, role="model", model="trained", prepare=_prepare,
                             from_plan=_from_plan, peer=_peer, cost=_cost, resumable=True, seconds="train_seconds"),
                   order=_order)
