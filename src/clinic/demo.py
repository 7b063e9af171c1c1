"""``clinic demo``: the whole story on the embedded SmolLM2-135M-Instruct, in minutes on a CPU.

base model -> evaluate -> SFT-align on refusals -> evaluate -> harmful fine-tune (SST2 + p
harmful) -> evaluate. Each step is an ordinary stage writing its own run directory inside the
demo directory; the table is printed and written to ``demo_table.md`` and ``demo.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data.mixture import check_mixture_args
from .errors import ClinicError
from .methods.config import train_config
from .methods.registry import get_method
from .modeling.chain import chain_inputs, check_chain, resolve_ref
from .pipeline import DataSpec, EvalConfig, read_metrics, run_evaluate, run_train
from .report import format_interval, markdown_table
from .rundir import check_output_dir, write_marker


@dataclass
class DemoConfig:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model to defend"})
    align_method: str = field(default="sft", metadata={"help": "alignment method (any `clinic align` method)"})
    n_align: int = field(default=256, metadata={"help": "refusal samples for alignment"})
    align_lr: float = field(default=5e-4, metadata={"help": "alignment learning rate"})
    task: str = field(default="sst2", metadata={"help": "benign task of the attack"})
    n_finetune: int = field(default=256, metadata={"help": "user samples for the attack"})
    poison_ratio: float = field(default=0.1, metadata={"help": "harmful fraction p of the user data"})
    finetune_lr: float = field(default=2e-4, metadata={"help": "attack learning rate"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    max_length: int = field(default=128, metadata={"help": "training sequence length"})
    n_prompts: int = field(default=40, metadata={"help": "harmful prompts (beavertails-test) per evaluation"})
    n_task: int = field(default=100, metadata={"help": "SST2 validation rows per evaluation"})
    max_new_tokens: int = field(default=48, metadata={"help": "new tokens per harmful answer"})
    judges: str = field(default="keyword,harm-ce", metadata={"help": "comma-separated judges"})
    seed: int = field(default=0, metadata={"help": "seed"})


def run_demo(cfg: DemoConfig, output: str | Path, overwrite: bool = False) -> Path:
    chain = resolve_ref(cfg.model)
    # --overwrite replaces only a folder clinic wrote, and never the model the demo starts from
    out = check_output_dir(output, overwrite, chain_inputs(cfg.model, chain))
    if not 0 <= cfg.poison_ratio <= 1:
        raise ClinicError(f"poison ratio p must be within [0, 1], got {cfg.poison_ratio}")
    judges = [j.strip() for j in cfg.judges.split(",") if j.strip()]
    evaluation = EvalConfig(n_prompts=cfg.n_prompts, judges=judges, tasks=[cfg.task] if cfg.task != "alpaca" else [],
                            n_task=cfg.n_task, max_new_tokens=cfg.max_new_tokens, batch_size=16)
    common = dict(batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed, logging_steps=5)
    # every setting is checked before the first stage runs (and before the folder exists)
    align_train = train_config("cpu-align", lr=cfg.align_lr, **common)
    attack_train = train_config("cpu-finetune", lr=cfg.finetune_lr, **common)
    get_method(cfg.align_method, "align")
    check_mixture_args(cfg.n_align, 0.0)
    check_mixture_args(cfg.n_finetune, cfg.poison_ratio)
    check_chain(chain)
    from .evaluation.judges import get_judge

    judge_objs = {name: get_judge(name) for name in judges}  # trained/cached once, reused
    if out.exists() and overwrite:
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_marker(out, "demo")  # first thing: marks the folder as clinic's for a later --overwrite
    print(f"clinic demo: {cfg.model}; {cfg.n_align} refusals to align, {cfg.n_finetune} {cfg.task} samples with "
          f"p={cfg.poison_ratio} to attack; {cfg.n_prompts} harmful prompts and {cfg.n_task} {cfg.task} rows per "
          f"evaluation, {cfg.max_new_tokens} new tokens; writing to {out}")
    timings = {}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"[{name}] done in {timings[name]:.0f} s")
        return result

    eval_base = timed("evaluate base", lambda: run_evaluate(cfg.model, evaluation, out / "eval-0-base", judges=judge_objs))
    aligned = timed("align", lambda: run_train(
        "align", model=cfg.model, method=cfg.align_method,
        train=align_train,
        data=DataSpec(source="refusals", n=cfg.n_align), output=out / "1-align"))
    eval_aligned = timed("evaluate aligned", lambda: run_evaluate(str(aligned), evaluation, out / "eval-1-aligned", judges=judge_objs))
    attacked = timed("harmful fine-tune", lambda: run_train(
        "finetune", model=str(aligned), method="sft",
        train=attack_train,
        data=DataSpec(task=cfg.task, n=cfg.n_finetune, poison_ratio=cfg.poison_ratio), output=out / "2-finetune"))
    eval_attacked = timed("evaluate attacked", lambda: run_evaluate(str(attacked), evaluation, out / "eval-2-attacked", judges=judge_objs))

    stages = [("base model", eval_base), (f"aligned ({cfg.align_method})", eval_aligned),
              (f"aligned + harmful fine-tune (p={cfg.poison_ratio})", eval_attacked)]
    header = (["stage"] + [f"HS {j} % [95 % CI], n={cfg.n_prompts}" for j in judges]
              + ["empty answers (%)", f"FA {cfg.task} % [95 % CI], n={cfg.n_task}"])
    rows, summary = [], {}
    for label, run_dir in stages:
        m = read_metrics(run_dir)
        hs = m["harmful"]["beavertails-test"]
        fa = m["tasks"].get(cfg.task)
        rows.append([label] + [format_interval(hs[j]["harmful_score"], hs[j]["ci95"]) for j in judges]
                    + [hs[judges[0]]["empty_share"], format_interval(fa["accuracy"], fa["ci95"]) if fa else "n/a"])
        summary[label] = m
    table = markdown_table(header, rows)
    settings = (f"model {cfg.model}; align: {cfg.n_align} refusals, lr {cfg.align_lr}; attack: {cfg.n_finetune} "
                f"{cfg.task} samples, p={cfg.poison_ratio}, lr {cfg.finetune_lr}; batch {cfg.batch_size}, max length "
                f"{cfg.max_length}; HS on the first {cfg.n_prompts} beavertails-test prompts, {cfg.max_new_tokens} "
                f"new tokens; FA on the first {cfg.n_task} {cfg.task} validation rows; [95 % Wilson intervals]")
    (out / "demo_table.md").write_text(f"{table}\n\n{settings}\n\ntimings (s): {json.dumps(timings)}\n")
    (out / "demo.json").write_text(json.dumps({"config": asdict(cfg), "metrics": summary, "timings_s": timings}, indent=2))
    print()
    print(table)
    print()
    print(settings)
    print(f"total {sum(timings.values()):.0f} s; everything is in {out}")
    return out
