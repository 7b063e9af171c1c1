"""The stages as functions: a config and an input in, a finished run directory out.

``run_train`` serves the align and finetune stages (any registered method); ``run_evaluate``
measures harmful score and fine-tune accuracy. Each writes ``config.yaml`` (resolved, with
package versions and seed), ``run.json`` (what a later stage needs to load the model),
``metrics.json`` and its artefacts, then ``DONE``.

Model hand-off (docs/reference/algorithms.md §6.4): a LoRA run saves its adapter; the next stage loads the base
model, merges every adapter of the chain in order, and adds a fresh LoRA. Full fine-tuning saves
the whole model, which becomes the next chain's base.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset

from .data.formatting import PROMPT_STYLES, PromptFormat, encode_prompts, format_prompt, training_row
from .data.mixture import SELECTIONS, build_attack_set, check_mixture_args, take_qa
from .data.sources import load_rows
from .data.tasks import SCORED_TASKS, SCORING_RULES, get_task
from .errors import ClinicError
from .evaluation.vllm_backend import BACKENDS, check_backend  # light: imports vllm only when generating with it
from .methods.checkpoints import (ResumeCheckpoints, checkpoint_step, drop_pickles, is_same_stage,
                                  prune_resume_checkpoints, resumable_checkpoint)
from .methods.config import TrainConfig
from .methods.engines import check_engine, check_process_group, destroy_process_group_at_exit
from .methods.registry import MethodSpec, get_method, method_config
from .modeling.chain import ModelChain, chain_inputs, check_chain, load_chain, resolve_ref
from .modeling.parallel import world_size
from .models import attach_lora, default_prompt_style
from .rundir import RunDir, check_output_dir, package_versions
from .settings import checkpoint_minutes
from .values import check_range, coerce_fields


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------------------------
# training stages


@dataclass
class DataSpec:
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


def check_data_spec(stage: str, data: DataSpec) -> None:
    """Refuse settings that would be silently ignored (a mapping for data that has no columns to map)."""
    from .data.sources import SOURCES

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


def _training_samples(stage: str, data: DataSpec, seed: int):
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
        from .data.mixture import qa_sample

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


def run_train(
    stage: str,
    *,
    model: str,
    method: str = "sft",
    train: TrainConfig,
    data: DataSpec,
    output: str | Path,
    method_options: dict | None = None,
    overwrite: bool = False,
    callbacks: list | None = None,
) -> Path:
    """Align or fine-tune ``model`` with ``method``; returns the finished run directory.

    Under ``accelerate launch`` / torchrun every process calls this; the main process writes."""
    chain = resolve_ref(model, train=True)
    inputs = chain_inputs(model, chain)
    check_output_dir(output, overwrite, inputs)
    spec = get_method(method, stage)
    cfg = method_config(spec, **(method_options or {}))
    check_engine(spec.name, spec.engines)  # from the launcher's environment: refuse before loading anything
    check_chain(chain)
    check_data_spec(stage, data)
    samples, indices = _training_samples(stage, data, train.seed)
    streams, stream_manifest = _extra_streams(spec, cfg, train.seed)
    minutes = checkpoint_minutes()
    # a resumable checkpoint needs the optimizer, scheduler and RNG states besides the weights
    args = train.sft_config(str(Path(output) / "checkpoints"), save_only_model=minutes == 0)  # starts the process group, if any
    check_process_group()
    destroy_process_group_at_exit()
    record = {
        "stage": stage,
        "method": method,
        "model": asdict(chain),
        "train": asdict(train),
        "method_options": asdict(cfg),
        "data": asdict(data),
        "seed": train.seed,
        "versions": package_versions(),
    }
    manifest = {"train": indices, "streams": stream_manifest}
    adopt = (lambda stale: is_same_stage(stale, record, manifest)) if minutes > 0 else None
    keep = (lambda path: resumable_checkpoint(path / "checkpoints") is not None) if minutes > 0 else None
    with RunDir(output, overwrite, inputs, adopt=adopt, keep_on_interrupt=keep) as run:
        args.output_dir = str(run.path / "checkpoints")
        resume_from = resumable_checkpoint(run.path / "checkpoints") if run.adopted else None
        if resume_from is not None:
            print(f"clinic: resuming {Path(output).name} from step {checkpoint_step(resume_from)} "
                  f"(the checkpoint of a stopped run, {run.adopted.name})", file=sys.stderr)
        model_obj, tok = load_chain(chain)
        if train.prompt_style == "chat" and not getattr(tok, "chat_template", None):
            raise ClinicError(f"model {chain.base!r} has no chat template; use --prompt-style alpaca")
        fmt = train.prompt_format()
        if not train.full_ft:
            # the adapter's initial weights from the stage's seed: torch seeds its default generator
            # from the OS at start (2.13), so an unseeded draw differs from one process to the next
            torch.manual_seed(train.seed)
            model_obj = attach_lora(model_obj, train.lora())
        rows = [training_row(tok, fmt, s.instruction, s.input, s.output) for s in samples]
        run.write_yaml("config.yaml", record)
        run.write_json("data_indices.json", manifest)
        if minutes > 0:
            callbacks = [*(callbacks or []), ResumeCheckpoints(minutes, train.save_steps)]
        torch.manual_seed(train.seed)
        trainer = spec.trainer(
            model=model_obj,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            method_config=cfg,
            prompt_format=fmt,
            extra_data=streams,
            callbacks=callbacks,
        )
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
        run.write_json(
            "metrics.json",
            {
                "train_seconds": round(seconds, 2),
                "train_loss": result.training_loss,
                "steps": trainer.state.global_step,
                "peak_memory_mb": round(peak_memory_mb(), 1),
                "n_train": len(samples),
                "engine": trainer.engine,  # what accelerate ran: single, ddp, fsdp, zero0-3 (methods/engines.py)
                "processes": world_size(),
                # resumed: train_seconds counts this process's part only; method state kept
                # between steps restarted there (clinic.methods.checkpoints)
                **({"resumed_from_step": checkpoint_step(resume_from)} if resume_from is not None else {}),
            },
        )
        run.write_json(
            "run.json",
            {"stage": stage, "method": method, "model_chain": asdict(new_chain), "prompt_format": asdict(fmt)},
        )
    return run.final


def _save_weights(trainer, run: RunDir, name: str) -> None:
    """The trained model (full) or adapter (LoRA) to ``run.path / name``, written once."""
    if trainer.engine in ("fsdp", "zero3"):  # sharded weights: every process takes part in gathering them
        trainer.save_model(str(run.path / name))
        if run.is_main:  # no pickle in a run directory (save_model adds the pickled TrainingArguments)
            (run.path / name / "training_args.bin").unlink(missing_ok=True)
    elif run.is_main:
        trainer.model.save_pretrained(run.path / name, safe_serialization=True)


# --------------------------------------------------------------------------------------------
# evaluation


@dataclass
class EvalConfig:
    harmful_sets: list[str] = field(default_factory=lambda: ["beavertails-test"], metadata={
        "help": "harmful prompt sets: beavertails-test, advbench, strongreject, do-not-answer, harmbench, sorrybench, "
                "or files"})
    n_prompts: int = field(default=100, metadata={"help": "prompts per set (the first N)"})
    judges: list[str] = field(default_factory=lambda: ["keyword", "harm-ce"], metadata={
        "help": "judges: keyword, harm-ce, classifier, beaverdam, llamaguard"})
    tasks: list[str] = field(default_factory=lambda: ["sst2"], metadata={
        "help": "tasks for accuracy (sst2, agnews, gsm8k; '' for none)"})
    n_task: int = field(default=100, metadata={"help": "test rows per task (the first N)"})
    task_rule: str = field(default="substring", metadata={"help": "classification scoring rule", "choices": SCORING_RULES})
    batch_size: int = field(default=16, metadata={"help": "generation batch size"})
    max_new_tokens: int = field(default=64, metadata={"help": "new tokens for harmful prompts"})
    prompt_style: str | None = field(default=None, metadata={  # None: what the model was trained with, else its default
        "help": "prompt format (default: as the model was trained)", "choices": PROMPT_STYLES})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt for the chat style"})
    backend: str = field(default="hf", metadata={
        "help": "generation backend: hf (batched transformers) or vllm (pip install clinic[vllm]; falls back to hf "
                "with a warning when vllm is missing)", "choices": BACKENDS})

    def __post_init__(self):
        coerce_fields(self, "evaluation setting ")
        check_backend(self.backend)
        if not self.judges and self.harmful_sets:  # an evaluation that scores nothing
            raise ClinicError("no judges given (--judges is empty); name at least one, e.g. keyword")
        if not self.harmful_sets:
            raise ClinicError("no harmful prompt sets given (--harmful-sets is empty); name at least one")
        from .evaluation.judges import check_judge_name

        for judge in self.judges:
            check_judge_name(judge)
        for what, names in (("judge", self.judges), ("prompt set", self.harmful_sets), ("task", self.tasks)):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:  # scored once under one key: the second would silently overwrite the first
                raise ClinicError(f"{what} {twice[0]!r} is named twice")
        check_range(self.batch_size, "batch size", 1)
        check_range(self.max_new_tokens, "max_new_tokens", 1)
        if self.task_rule not in SCORING_RULES:
            raise ClinicError(f"unknown scoring rule {self.task_rule!r}; choose one of {', '.join(SCORING_RULES)}")
        for task in self.tasks:
            get_task(task)
            if task not in SCORED_TASKS:
                raise ClinicError(f"task {task!r} has no accuracy rule; choose among {', '.join(SCORED_TASKS)}")
        if self.n_prompts < 1 or self.n_task < 0:
            raise ClinicError("prompt and task sample counts must be positive")


def _prompt_set(name: str, n: int) -> list[str]:
    rows = load_rows(name, kind="prompts")
    if n > len(rows):
        raise ClinicError(f"asked for {n} prompts but {name} has only {len(rows)}")
    return [r["prompt"] for r in rows[:n]]


def evaluate_model(model, tok, cfg: EvalConfig, fmt: PromptFormat, judges: dict | None = None) -> tuple[dict, list[dict]]:
    """Generate and score; returns (metrics, generation records). Nothing is written."""
    from .evaluation.judges import get_judge
    from .evaluation.scoring import harmful_score, task_accuracy
    from .evaluation.vllm_backend import generate_with

    judges = judges or {name: get_judge(name) for name in cfg.judges}
    metrics: dict = {"harmful": {}, "tasks": {}}
    records: list[dict] = []
    for set_name in cfg.harmful_sets:
        prompts = _prompt_set(set_name, cfg.n_prompts)
        texts = [format_prompt(tok, fmt, p) for p in prompts]
        responses = generate_with(cfg.backend, model, tok, encode_prompts(tok, fmt, texts), batch_size=cfg.batch_size,
                                  max_new_tokens=cfg.max_new_tokens, desc=f"generate {set_name}")
        set_metrics = {}
        per_judge = {}
        for name, judge in judges.items():
            result = harmful_score(judge, prompts, responses)
            set_metrics[name] = {k: result[k] for k in ("harmful_score", "empty_share", "n", "ci95")}
            per_judge[name] = result["flags"]
        metrics["harmful"][set_name] = set_metrics
        for i, (p, r) in enumerate(zip(prompts, responses)):
            records.append({"set": set_name, "prompt": p, "response": r,
                            "flagged": {name: bool(flags[i]) for name, flags in per_judge.items()}})
    for task_name in cfg.tasks:
        if cfg.n_task == 0:
            continue
        task = get_task(task_name)
        rows = task.test_rows()
        if cfg.n_task > len(rows):
            raise ClinicError(f"asked for {cfg.n_task} {task_name} test rows but only {len(rows)} exist")
        rows = rows[: cfg.n_task]
        samples = [task.sample(r) for r in rows]
        texts = [format_prompt(tok, fmt, s.instruction, s.input) for s in samples]
        outputs = generate_with(cfg.backend, model, tok, encode_prompts(tok, fmt, texts), batch_size=cfg.batch_size,
                                max_new_tokens=task.max_new_tokens, desc=f"generate {task_name}")
        result = task_accuracy(task, rows, outputs, cfg.task_rule)
        metrics["tasks"][task_name] = {"accuracy": result["accuracy"], "n": result["n"], "ci95": result["ci95"],
                                       "rule": cfg.task_rule}
        for s, out, ok in zip(samples, outputs, result["correct"]):
            records.append({"set": task_name, "prompt": s.input, "response": out, "correct": bool(ok)})
    return metrics, records


def eval_format(chain: ModelChain, tok, cfg: EvalConfig) -> PromptFormat:
    """The prompt format for evaluation: explicit, else the training one, else the model's."""
    if cfg.prompt_style:
        return PromptFormat(cfg.prompt_style, cfg.system_prompt)
    if chain.prompt_format:
        return PromptFormat(**chain.prompt_format)
    return PromptFormat(default_prompt_style(tok), cfg.system_prompt)


def run_evaluate(model: str, cfg: EvalConfig, output: str | Path, overwrite: bool = False, judges: dict | None = None) -> Path:
    """Harmful score on each prompt set with each judge, and fine-tune accuracy per task."""
    from .evaluation.judges import get_judge

    chain = resolve_ref(model)
    inputs = chain_inputs(model, chain)
    check_output_dir(output, overwrite, inputs)
    check_chain(chain)
    for name in cfg.harmful_sets:
        _prompt_set(name, cfg.n_prompts)  # validate before any work
    judges = judges or {name: get_judge(name) for name in cfg.judges}
    with RunDir(output, overwrite, inputs) as run:
        model_obj, tok = load_chain(chain)
        fmt = eval_format(chain, tok, cfg)
        run.write_yaml("config.yaml", {"stage": "evaluate", "model": asdict(chain), "eval": asdict(cfg),
                                       "prompt_format": asdict(fmt), "versions": package_versions()})
        start = time.perf_counter()
        metrics, records = evaluate_model(model_obj, tok, cfg, fmt, judges)
        metrics["eval_seconds"] = round(time.perf_counter() - start, 2)
        run.write_jsonl("generations.jsonl", records)
        run.write_json("metrics.json", metrics)
        run.write_json("run.json", {"stage": "evaluate", "model_chain": asdict(chain), "prompt_format": asdict(fmt)})
    return run.final


def read_metrics(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())
