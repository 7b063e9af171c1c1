"""The stages as functions: a config and an input in, a finished run directory out.

``run_train`` serves the align and finetune stages (any registered method); ``run_evaluate``
measures harmful score and fine-tune accuracy. Each writes ``config.yaml`` (resolved, with
package versions and seed), ``run.json`` (what a later stage needs to load the model),
``metrics.json`` and its artefacts, then ``DONE``.

Model hand-off (ALGORITHMS.md §6.4): a LoRA run saves its adapter; the next stage loads the base
model, merges every adapter of the chain in order, and adds a fresh LoRA. Full fine-tuning saves
the whole model, which becomes the next chain's base.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset

from .data.formatting import PromptFormat, encode_prompts, format_prompt, training_row
from .data.mixture import build_attack_set, check_mixture_args, take_qa
from .data.sources import load_rows
from .errors import ClinicError
from .methods.base import MethodSpec, TrainConfig, get_method, method_config
from .methods.engines import check_engine, check_process_group, destroy_process_group_at_exit, world_size
from .models import attach_lora, default_prompt_style, load_model, merge_adapter
from .rundir import RunDir, check_output_dir, is_run_dir, package_versions, read_run
from .tasks import SCORED_TASKS, get_task

# --------------------------------------------------------------------------------------------
# model references


@dataclass
class ModelChain:
    """How to rebuild a model: a base (alias, path or hub id) plus adapters merged in order."""

    base: str
    adapters: list[str] = field(default_factory=list)
    prompt_format: dict | None = None  # the format the last training stage used


def resolve_ref(ref: str) -> ModelChain:
    """A model name/path, or a finished run directory, as a :class:`ModelChain`."""
    if is_run_dir(ref):
        record = read_run(ref)
        chain = record["model_chain"]
        return ModelChain(chain["base"], list(chain["adapters"]), record.get("prompt_format"))
    return ModelChain(ref)


def check_chain(chain: ModelChain) -> None:
    """Fail early (before any output is written) on a model that cannot be found."""
    from .models import resolve_model_path

    if not chain.base.startswith("tiny-random-"):
        resolve_model_path(chain.base)
    for adapter in chain.adapters:
        if not (Path(adapter) / "adapter_config.json").exists():
            raise ClinicError(f"adapter {adapter} of the model chain is missing")


def load_chain(chain: ModelChain, dtype: str = "float32", attn_implementation: str | None = None):
    model, tok = load_model(chain.base, dtype=dtype, attn_implementation=attn_implementation)
    for adapter in chain.adapters:
        model = merge_adapter(model, adapter)
    return model, tok


def load_model_from_ref(ref: str, dtype: str = "float32", attn_implementation: str | None = None):
    """``(model, tokenizer)`` for a model name/path or a run directory (adapters merged)."""
    return load_chain(resolve_ref(ref), dtype, attn_implementation)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------------------------
# training stages


@dataclass
class DataSpec:
    """The training data of a stage.

    align: ``source`` (a named QA dataset or file) and ``n`` samples (``None``: all).
    finetune: ``task`` + ``n`` + ``poison_ratio`` builds the attack set; or ``source`` (a user
    file of prompt/response rows, with ``columns``) is used as it is.
    """

    source: str | None = None
    task: str | None = None
    n: int | None = None
    poison_ratio: float = 0.0
    harmful_source: str = "beavertails-harmful"
    selection: str = "random"
    columns: dict | None = None


def _training_samples(stage: str, data: DataSpec, seed: int):
    """(samples, indices manifest) for a stage, validated before anything is written."""
    if stage == "finetune" and data.task:
        if data.n is None:
            raise ClinicError("fine-tuning on a task needs a sample count n")
        attack = build_attack_set(data.task, data.n, data.poison_ratio, seed, data.harmful_source, data.selection)
        return attack.samples, attack.manifest()
    source = data.source or ("refusals" if stage == "align" else None)
    if source is None:
        raise ClinicError("fine-tuning needs --task (with --n and --poison-ratio) or --data FILE")
    if data.n is not None:
        check_mixture_args(data.n, 0.0)
    if data.columns:
        from .data.mixture import qa_sample

        rows = load_rows(source, kind="qa", columns=data.columns)
        if data.n is not None and data.n > len(rows):
            raise ClinicError(f"asked for {data.n} samples but {source} has only {len(rows)}")
        rows = rows[: data.n] if data.n is not None else rows
        return [qa_sample(r) for r in rows], {"n": len(rows), "indices": {source: list(range(len(rows)))}}
    samples, idx = take_qa(source, data.n, seed, "first" if data.selection == "first" else "random")
    return samples, {"n": len(samples), "indices": {source: idx}}


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
    check_output_dir(output, overwrite)
    spec = get_method(method, stage)
    cfg = method_config(spec, **(method_options or {}))
    check_engine(spec.name, spec.engines)  # from the launcher's environment: refuse before loading anything
    chain = resolve_ref(model)
    check_chain(chain)
    samples, indices = _training_samples(stage, data, train.seed)
    streams, stream_manifest = _extra_streams(spec, cfg, train.seed)
    args = train.sft_config(str(Path(output) / "checkpoints"))  # starts the process group, if any
    check_process_group()
    destroy_process_group_at_exit()
    with RunDir(output, overwrite) as run:
        args.output_dir = str(run.path / "checkpoints")
        model_obj, tok = load_chain(chain)
        if train.prompt_style == "chat" and not getattr(tok, "chat_template", None):
            raise ClinicError(f"model {chain.base!r} has no chat template; use --prompt-style alpaca")
        fmt = train.prompt_format()
        if not train.full_ft:
            model_obj = attach_lora(model_obj, train.lora())
        rows = [training_row(tok, fmt, s.instruction, s.input, s.output) for s in samples]
        run.write_yaml(
            "config.yaml",
            {
                "stage": stage,
                "method": method,
                "model": asdict(chain),
                "train": asdict(train),
                "method_options": asdict(cfg),
                "data": asdict(data),
                "seed": train.seed,
                "versions": package_versions(),
            },
        )
        run.write_json("data_indices.json", {"train": indices, "streams": stream_manifest})
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
        result = trainer.train()
        seconds = time.perf_counter() - start
        run.write_jsonl("train_log.jsonl", trainer.state.log_history)
        _save_weights(trainer, run, "model" if train.full_ft else "adapter")
        if train.full_ft:
            if run.is_main:
                tok.save_pretrained(run.path / "model")
            new_chain = ModelChain(str(run.final / "model"), [], asdict(fmt))
        else:
            new_chain = ModelChain(chain.base, chain.adapters + [str(run.final / "adapter")], asdict(fmt))
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
    harmful_sets: list[str] = field(default_factory=lambda: ["beavertails-test"])
    n_prompts: int = 100
    judges: list[str] = field(default_factory=lambda: ["keyword", "harm-ce"])
    tasks: list[str] = field(default_factory=lambda: ["sst2"])
    n_task: int = 100
    task_rule: str = "substring"
    batch_size: int = 16
    max_new_tokens: int = 64
    prompt_style: str | None = None  # None: what the model was trained with, else its default
    system_prompt: str | None = None
    backend: str = "hf"  # generation: hf (batched transformers) or vllm (falls back to hf when missing)

    def __post_init__(self):
        from .evaluation.vllm_backend import check_backend
        from .tasks import SCORING_RULES

        check_backend(self.backend)
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
            set_metrics[name] = {k: result[k] for k in ("harmful_score", "empty_share", "n")}
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
        metrics["tasks"][task_name] = {"accuracy": result["accuracy"], "n": result["n"], "rule": cfg.task_rule}
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

    check_output_dir(output, overwrite)
    chain = resolve_ref(model)
    check_chain(chain)
    for name in cfg.harmful_sets:
        _prompt_set(name, cfg.n_prompts)  # validate before any work
    judges = judges or {name: get_judge(name) for name in cfg.judges}
    with RunDir(output, overwrite) as run:
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
