"""The evaluate stage: harmful score on each prompt set with each judge, and fine-tune accuracy
per task. Writes ``config.yaml``, ``generations.jsonl`` (every answer, with each judge's flag),
``metrics.json`` and ``run.json``, then ``DONE``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.formatting import PROMPT_STYLES, PromptFormat, encode_prompts, format_prompt
from ..data.sources import SOURCES, load_rows
from ..data.splits import SPLITS, check_prompt_split, split_rows, validation_start
from ..data.tasks import SCORING_RULES, get_task, scored_tasks
from ..errors import ClinicError
from ..evaluation.capability import GUARD_SET, OVERREFUSAL_SET
from ..evaluation.vllm_backend import BACKENDS  # light: imports vllm only when generating with it
from ..modeling.chain import ModelChain, load_chain
from ..modeling.models import default_prompt_style
from ..settings import package_versions
from ..values import check_fields
from .base import StageContext, StageKind, execute, register_stage


GUARD_SIZE, OVERREFUSAL_SIZE = SOURCES[GUARD_SET].size, SOURCES[OVERREFUSAL_SET].size


def _available(name: str, split: str) -> int:
    """Rows of a guard set in ``split``: a default count never asks for more."""
    size = SOURCES[name].size
    return size - validation_start(name) if split == "validation" else size


@dataclass
class EvalConfig:
    harmful_sets: list[str] = field(default_factory=lambda: ["beavertails-test"], metadata={
        "help": "harmful prompt sets: beavertails-test, advbench, strongreject, do-not-answer, harmbench, sorrybench, "
                "or files"})
    n_prompts: int = field(default=100, metadata={"help": "prompts per set (the first N)", "range": (1, None)})
    judges: list[str] = field(default_factory=lambda: ["keyword", "harm-ce"], metadata={
        "help": "judges: keyword, harm-ce, classifier, beaverdam, llamaguard"})
    tasks: list[str] = field(default_factory=lambda: ["sst2"], metadata={
        "help": "tasks for accuracy (sst2, agnews, gsm8k; '' for none)"})
    n_task: int = field(default=100, metadata={"help": "test rows per task (the first N)", "range": (0, None)})
    task_rule: str = field(default="substring", metadata={"help": "classification scoring rule", "choices": SCORING_RULES})
    batch_size: int = field(default=16, metadata={"help": "generation batch size", "range": (1, None)})
    max_new_tokens: int = field(default=64, metadata={"help": "new tokens for harmful prompts", "range": (1, None)})
    prompt_style: str | None = field(default=None, metadata={  # None: what the model was trained with, else its default
        "help": "prompt format (default: as the model was trained)", "choices": PROMPT_STYLES})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt for the chat style"})
    n_guard: int | None = field(default=None, metadata={
        "help": "AlpacaEval instructions (never trained on) for the free-text capability guard: the share of coherent "
                "answers that are not refusals, and the reference answers' per-token NLL (default: n_prompts; 0: off)",
        "range": (0, GUARD_SIZE), "since": "issue 35"})
    n_overrefusal: int | None = field(default=None, metadata={
        "help": "XSTest safe prompts that look unsafe, for over-refusal (default: n_prompts, at most 250; 0: off)",
        "range": (0, OVERREFUSAL_SIZE), "since": "issue 35"})
    split: str = field(default="test", metadata={
        "help": "which rows: test (the first N of each set, what results report) or validation (rows no test "
                "of up to 400 reaches and no judge trained on, for choosing a defence's or an attack's "
                "settings; clinic.data.splits)", "choices": SPLITS, "since": "issue 36"})
    backend: str = field(default="hf", metadata={
        "help": "generation backend: hf (batched transformers) or vllm (pip install clinic[vllm]; falls back to hf "
                "with a warning when vllm is missing)", "choices": BACKENDS, "label": "generation backend"})

    @property
    def guard_prompts(self) -> int:
        """AlpacaEval instructions the guard answers: as many as the harmful prompts unless set."""
        return min(self.n_prompts, _available(GUARD_SET, self.split)) if self.n_guard is None else self.n_guard

    @property
    def overrefusal_prompts(self) -> int:
        """XSTest safe prompts: as many as the harmful prompts unless set, at most the split has."""
        if self.n_overrefusal is not None:
            return self.n_overrefusal
        return min(self.n_prompts, _available(OVERREFUSAL_SET, self.split))

    def __post_init__(self):
        check_fields(self, "evaluation setting ")  # types, choices and ranges (metadata)
        if not self.judges and self.harmful_sets:  # an evaluation that scores nothing
            raise ClinicError("no judges given (--judges is empty); name at least one, e.g. keyword")
        if not self.harmful_sets:
            raise ClinicError("no harmful prompt sets given (--harmful-sets is empty); name at least one")
        from ..evaluation.judges import check_judge_name

        for judge in self.judges:
            check_judge_name(judge)
        for what, names in (("judge", self.judges), ("prompt set", self.harmful_sets), ("task", self.tasks)):
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:  # scored once under one key: the second would silently overwrite the first
                raise ClinicError(f"{what} {twice[0]!r} is named twice")
        for name in self.harmful_sets:
            check_prompt_split(name, self.split)
        for task in self.tasks:
            get_task(task)
            if task not in scored_tasks():
                raise ClinicError(f"task {task!r} has no accuracy rule; choose among {', '.join(scored_tasks())}")


def _prompt_set(name: str, n: int, split: str = "test") -> list[str]:
    return [r["prompt"] for r in split_rows(load_rows(name, kind="prompts"), n, split, name, "prompts")]


def _answers(model, tok, cfg: EvalConfig, fmt: PromptFormat, prompts: list, set_name: str, batch_size: int | None,
             vllm, max_new_tokens: int | None = None) -> tuple[list[list[int]], list[str]]:
    """(prompt token ids, answers) of the model to ``prompts``, each a prompt or an
    (instruction, input) pair, in the evaluation's format; ``max_new_tokens`` defaults to the
    config's (a task's answers are shorter)."""
    from ..evaluation.vllm_backend import generate_with

    texts = [format_prompt(tok, fmt, *(p if isinstance(p, tuple) else (p,))) for p in prompts]
    ids = encode_prompts(tok, fmt, texts)
    answers = generate_with(cfg.backend, model, tok, ids, batch_size=batch_size or cfg.batch_size,
                            max_new_tokens=max_new_tokens or cfg.max_new_tokens, desc=f"generate {set_name}", vllm=vllm)
    return ids, answers


def evaluate_model(model, tok, cfg: EvalConfig, fmt: PromptFormat, judges: dict | None = None,
                   batch_size: int | None = None, vllm=None) -> tuple[dict, list[dict]]:
    """Generate and score; returns (metrics, generation records). Nothing is written.
    ``batch_size``: prompts per generation batch (default the config's; an execution setting)."""
    from ..evaluation.judges import get_judge
    from ..evaluation.scoring import HARMFUL_METRICS, SCORE_DECIMALS, harmful_score, task_accuracy

    judges = judges or {name: get_judge(name) for name in cfg.judges}
    metrics: dict = {"harmful": {}, "tasks": {}}
    records: list[dict] = []
    for set_name in cfg.harmful_sets:
        prompts = _prompt_set(set_name, cfg.n_prompts, cfg.split)
        _, responses = _answers(model, tok, cfg, fmt, prompts, set_name, batch_size, vllm)
        set_metrics = {}
        per_judge = {}
        for name, judge in judges.items():
            result = harmful_score(judge, prompts, responses)
            set_metrics[name] = {k: result[k] for k in HARMFUL_METRICS}
            per_judge[name] = result["flags"], result["scores"]
        metrics["harmful"][set_name] = set_metrics
        for i, (p, r) in enumerate(zip(prompts, responses)):
            # each answer's probability kept beside its flag, so a graded score can be recomputed
            records.append({"set": set_name, "prompt": p, "response": r,
                            "flagged": {name: bool(flags[i]) for name, (flags, _) in per_judge.items()},
                            "scores": {name: round(scores[i], SCORE_DECIMALS)
                                       for name, (_, scores) in per_judge.items()}})
    if cfg.guard_prompts or cfg.overrefusal_prompts:
        metrics["guard"] = _guard(model, tok, cfg, fmt, records, batch_size, vllm)
    for task_name in cfg.tasks:
        if cfg.n_task == 0:
            continue
        task = get_task(task_name)
        rows = split_rows(task.test_rows(), cfg.n_task, cfg.split, task_name, "rows")
        samples = [task.sample(r) for r in rows]
        _, outputs = _answers(model, tok, cfg, fmt, [(s.instruction, s.input) for s in samples], task_name, batch_size,
                              vllm, task.max_new_tokens)
        result = task_accuracy(task, rows, outputs, cfg.task_rule)
        metrics["tasks"][task_name] = {"accuracy": result["accuracy"], "n": result["n"], "ci95": result["ci95"],
                                       "rule": cfg.task_rule}
        for s, out, ok in zip(samples, outputs, result["correct"]):
            records.append({"set": task_name, "prompt": s.input, "response": out, "correct": bool(ok)})
    return metrics, records


def _guard(model, tok, cfg: EvalConfig, fmt: PromptFormat, records: list[dict], batch_size: int | None, vllm) -> dict:
    """The free-text capability guard (:mod:`clinic.evaluation.capability`): answers to benign
    instructions, the reference answers' NLL, over-refusal on safe prompts. Adds one record per
    answer to ``records``."""
    from ..evaluation.capability import answer_outcomes, free_text_guard, is_refusal, overrefusal, reference_nll

    batch_size = batch_size or cfg.batch_size
    guard: dict = {}
    if cfg.guard_prompts:
        rows = split_rows(load_rows(GUARD_SET), cfg.guard_prompts, cfg.split, GUARD_SET, "instructions")
        ids, responses = _answers(model, tok, cfg, fmt, [r["prompt"] for r in rows], GUARD_SET, batch_size, vllm)
        guard[GUARD_SET] = {**free_text_guard(responses),
                            "reference_nll": reference_nll(model, tok, ids, [r["response"] for r in rows],
                                                           batch_size=batch_size)}
        records += [{"set": GUARD_SET, "prompt": r["prompt"], "response": out, **answer_outcomes(out)}
                    for r, out in zip(rows, responses)]
    if cfg.overrefusal_prompts:
        prompts = [r["prompt"] for r in split_rows(load_rows(OVERREFUSAL_SET), cfg.overrefusal_prompts, cfg.split,
                                                     OVERREFUSAL_SET, "prompts")]
        _, responses = _answers(model, tok, cfg, fmt, prompts, OVERREFUSAL_SET, batch_size, vllm)
        guard[OVERREFUSAL_SET] = overrefusal(responses)
        records += [{"set": OVERREFUSAL_SET, "prompt": p, "response": out, "refusal": is_refusal(out)}
                    for p, out in zip(prompts, responses)]
    return guard


def eval_format(chain: ModelChain, tok, cfg: EvalConfig) -> PromptFormat:
    """The prompt format for evaluation: explicit, else the training one, else the model's."""
    if cfg.prompt_style:
        return PromptFormat(cfg.prompt_style, cfg.system_prompt)
    if chain.prompt_format:
        return PromptFormat(**chain.prompt_format)
    return PromptFormat(default_prompt_style(tok), cfg.system_prompt)


def _judge_options(name: str, device: str, paths: dict) -> dict:
    """A judge's options from the execution: its local weights (``--judge-model``) and the device,
    for the judges that take one."""
    import inspect

    from ..evaluation.judges import JUDGES

    accepted = inspect.signature(JUDGES[name].__init__).parameters
    options = {"model_path": paths[name]} if name in paths else {}
    if "device" in accepted:
        options["device"] = device
    return options


def _prepare(ctx: StageContext) -> None:
    from ..modeling.device import generation_batch, placement

    cfg = ctx.config
    for name in cfg.harmful_sets:
        _prompt_set(name, cfg.n_prompts, cfg.split)  # validate before any work
    from ..evaluation.vllm_backend import VllmOptions

    device, dtype = placement(ctx.options)
    ctx.state.update(device=device, dtype=dtype,
                     batch=generation_batch(device, cfg.batch_size, ctx.options.get("generation_batch")),
                     vllm=VllmOptions(chain=ctx.chain, mode=ctx.options.get("vllm_mode") or "auto",
                                      tensor_parallel=ctx.options.get("tensor_parallel"),
                                      enforce_eager=bool(ctx.options.get("enforce_eager"))))
    paths = ctx.options.get("judge_models") or {}  # local weights of model judges (clinic evaluate --judge-model)
    ctx.state["judges"] = ctx.options.get("judges") or build_judges(cfg.judges, device, paths)


def build_judges(names, device: str = "cpu", paths: dict | None = None) -> dict:
    """The judges ``names``, each on ``device`` where it takes one, with local weights from
    ``paths`` (``--judge-model``); built once and shared by every evaluation of a run."""
    from ..evaluation.judges import get_judge

    return {name: get_judge(name, **_judge_options(name, device, paths or {})) for name in names}


def _run(ctx: StageContext) -> None:
    cfg, chain, run, st = ctx.config, ctx.chain, ctx.run, ctx.state
    model_obj, tok = load_chain(chain, dtype=st["dtype"], device=st["device"])
    fmt = eval_format(chain, tok, cfg)
    run.write_yaml("config.yaml", {"stage": "evaluate", "model": asdict(chain), "eval": asdict(cfg),
                                   "prompt_format": asdict(fmt), "versions": package_versions(),
                                   "execution": {"device": st["device"], "dtype": str(st["dtype"]).removeprefix("torch."),
                                                 "generation_batch": st["batch"]}})
    start = time.perf_counter()
    metrics, records = evaluate_model(model_obj, tok, cfg, fmt, st["judges"], batch_size=st["batch"], vllm=st["vllm"])
    metrics["eval_seconds"] = round(time.perf_counter() - start, 2)
    run.write_jsonl("generations.jsonl", records)
    run.write_json("metrics.json", metrics)
    run.write_json("run.json", {"stage": "evaluate", "model_chain": asdict(chain), "prompt_format": asdict(fmt)})


def run_evaluate(model: str, cfg: EvalConfig, output: str | Path, overwrite: bool = False, judges: dict | None = None,
                 **execution) -> Path:
    """Harmful score on each prompt set with each judge, and fine-tune accuracy per task;
    ``execution``: device, dtype, generation_batch (never part of the stage's hash)."""
    return execute("evaluate", cfg, output=output, model=model, overwrite=overwrite, judges=judges, **execution)


def _from_plan(stage, parent_dir: Path | None, model: str):
    settings = {k: v for k, v in stage.config.items() if k != "model"}
    return EvalConfig(**settings), stage.config.get("model") or (str(parent_dir) if parent_dir else model)


def _key(cfg: dict, guard: bool) -> tuple:
    # the free-text guard answers two more prompt sets: about three to four times the time of an
    # evaluation without it on this CPU (docs/judges.md), so the two are not each other's peers
    return ("evaluate", cfg.get("n_prompts"), cfg.get("n_task"), cfg.get("max_new_tokens"), guard)


def _peer(config: dict, metrics: dict):
    if metrics.get("eval_seconds") is None:
        return None
    return _key(config.get("eval") or {}, "guard" in metrics), metrics["eval_seconds"]


def _guarded(cfg: dict) -> bool:
    """Whether a planned evaluation runs the guard (its counts default to n_prompts; 0 turns each off)."""
    return cfg.get("n_guard") != 0 or cfg.get("n_overrefusal") != 0


def _cost(stage, store: Path, pace: dict):
    """An evaluation costs what finished ones with the same prompts, task rows and new tokens, and
    the free-text guard or not, did."""
    import statistics

    guarded = _guarded(stage.config)
    peers, note = pace.get(_key(stage.config, guarded)), ""
    if not peers and guarded:  # only peers timed before the guard existed: say the estimate is low
        peers, note = pace.get(_key(stage.config, False)), " timed without the free-text guard (an underestimate)"
    if not peers:
        return None
    return {"seconds": statistics.median(peers),
            "basis": f"{len(peers)} finished peer{'s' if len(peers) > 1 else ''}{note}"}


register_stage(StageKind("evaluate", EvalConfig, _run, "harmful score (each judge) and task accuracy of a model",
                         role="measurement", prepare=_prepare, from_plan=_from_plan, peer=_peer, cost=_cost), order=3)
