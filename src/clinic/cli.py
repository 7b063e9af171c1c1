"""The ``clinic`` command: thin argument parsing over the stage functions.

Every user error (bad file, unknown name, value out of range, existing output) is printed as
one line, ``clinic: error: ...``, and the exit code is 2; nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from .curation import add_curate_command  # light: the module imports torch only when run
from .errors import ClinicError
from .settings import COMPUTE_COMMANDS, torch_threads

# --------------------------------------------------------------------------------------------
# argparse helpers


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _type_of(field: dataclasses.Field):
    text = str(field.type)
    if "bool" in text:
        return bool
    if "float" in text:
        return float
    if "int" in text:
        return int
    return str


def add_dataclass_options(group, cls, skip=(), defaults_from=None, owners: dict | None = None):
    """One ``--option`` per dataclass field, default ``None`` (= the preset's or the class's)."""
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name.startswith("_"):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _type_of(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        if owners is not None:
            owners.setdefault(f.name, []).append((cls, default, help_text))
            continue
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(), help=help_text)


def add_method_options(parser, stage: str, specs: dict | None = None):
    """Options of every method of ``stage`` (or of ``specs``: name -> spec with a ``config``
    dataclass); a name shared by methods is one option."""
    from .methods.base import methods_for

    owners: dict[str, list] = {}
    method_of_cls = {}
    for name, spec in (specs if specs is not None else methods_for(stage)).items():
        method_of_cls[spec.config] = name
        add_dataclass_options(None, spec.config, owners=owners)
    group = parser.add_argument_group("method options (each applies to the methods named in its help)")
    for field_name, uses in owners.items():
        cls, _default, _help = uses[0]
        f = next(x for x in dataclasses.fields(cls) if x.name == field_name)
        kind = _type_of(f)
        help_text = "; ".join(f"{method_of_cls[c]}: {h or ''} (default {d})" for c, d, h in uses)
        flag = "--" + field_name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, dest=f"m_{field_name}", action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=f"m_{field_name}", type=kind, default=None, metavar=field_name.upper(), help=help_text)


def method_values(args, spec) -> dict:
    """The method options the user set; an option of another method is an error."""
    allowed = {f.name for f in dataclasses.fields(spec.config)}
    values = {}
    for key, value in vars(args).items():
        if key.startswith("m_") and value is not None:
            name = key[2:]
            if name not in allowed:
                raise ClinicError(f"option --{name.replace('_', '-')} does not apply to method {spec.name!r}")
            values[name] = value
    return values


def train_values(args) -> dict:
    from .methods.base import TrainConfig

    return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)}


# --------------------------------------------------------------------------------------------
# commands


def _add_train_command(sub, stage: str):
    from .methods.base import PRESETS, TrainConfig, methods_for

    methods = methods_for(stage)
    verb = COMMAND_HELP[stage]
    listing = "\n".join(f"  {n:10s} {s.summary}" for n, s in methods.items())
    p = sub.add_parser(
        stage,
        help=verb,
        description=f"{verb}. Writes a run directory (config.yaml, data_indices.json, adapter/ or model/, "
        f"train_log.jsonl, metrics.json).\n\nmethods:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="alias (smollm2-135m-instruct, gemma3-270m, tiny-random-llama), "
                   "local directory, hub id, or a previous run directory")
    p.add_argument("--method", default="sft", help=f"one of: {', '.join(methods)} (default sft)")
    p.add_argument("--output", required=True, help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--preset", help=f"reference settings: {', '.join(PRESETS)}")
    d = p.add_argument_group("data")
    if stage == "align":
        d.add_argument("--data", default="refusals", help="alignment data: a named QA dataset or a file (default refusals)")
        d.add_argument("--helpful", help="a helpful instruction dataset to mix into the alignment data (e.g. alpaca)")
        d.add_argument("--helpful-n", type=int, help="how many --helpful rows to mix in")
    else:
        d.add_argument("--task", help="benign task: sst2, agnews, gsm8k, alpaca")
        d.add_argument("--poison-ratio", type=float, default=0.0, help="fraction p of harmful samples, in [0, 1]")
        d.add_argument("--harmful-data", default="beavertails-harmful", help="source of the harmful samples")
        d.add_argument("--data", help="a user file of prompt/response rows instead of --task")
    d.add_argument("--n", type=int, help="number of samples (align: default all)")
    d.add_argument("--columns", help="column mapping for a user file, e.g. prompt=question,response=answer")
    d.add_argument("--selection", default="random", choices=["random", "first"], help="seeded random rows or the first n")
    add_dataclass_options(p.add_argument_group("training"), TrainConfig)
    add_method_options(p, stage)
    if stage == "finetune":
        p.add_argument("--sink-every", type=int, default=0, help="record the positive-sink-head count every N steps")
    p.set_defaults(func=lambda a: cmd_train(a, stage))


def cmd_train(args, stage: str) -> None:
    from .data.sources import parse_columns
    from .methods.base import get_method, train_config
    from .methods.engines import rank
    from .pipeline import DataSpec, run_train

    spec = get_method(args.method, stage)
    train = train_config(args.preset, **train_values(args))
    data = DataSpec(
        source=args.data,
        task=getattr(args, "task", None),
        n=args.n,
        poison_ratio=getattr(args, "poison_ratio", 0.0),
        harmful_source=getattr(args, "harmful_data", "beavertails-harmful"),
        selection=args.selection,
        columns=parse_columns(args.columns),
        helpful=getattr(args, "helpful", None),
        helpful_n=getattr(args, "helpful_n", None),
    )
    callbacks = []
    if getattr(args, "sink_every", 0) < 0:
        raise ClinicError(f"--sink-every must be 0 (off) or a positive step count, got {args.sink_every}")
    if getattr(args, "sink_every", 0):
        from .sink import SinkCountCallback

        callbacks.append(SinkCountCallback(every=args.sink_every))
    out = run_train(stage, model=args.model, method=spec.name, train=train, data=data, output=args.output,
                    method_options=method_values(args, spec), overwrite=args.overwrite, callbacks=callbacks)
    if rank() == 0:  # under accelerate launch every process returns here
        print(f"{stage} run written to {out}")


def _add_evaluate(sub):
    from .evaluation.vllm_backend import BACKENDS  # light: imports vllm only when generating with it

    p = sub.add_parser("evaluate", help="Harmful score and fine-tune accuracy of a model",
                       description="Generate answers to harmful prompts and task questions, score them, and write "
                       "generations.jsonl and metrics.json to a run directory.")
    p.add_argument("--model", required=True, help="model name/path or a run directory")
    p.add_argument("--output", required=True, help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--harmful-prompts", default="beavertails-test",
                   help="comma-separated prompt sets: beavertails-test, advbench, strongreject, do-not-answer, "
                   "harmbench, sorrybench, or files")
    p.add_argument("--n-prompts", type=int, default=100, help="prompts per set (the first N)")
    p.add_argument("--judges", default="keyword,harm-ce",
                   help="comma-separated: keyword, harm-ce, classifier, beaverdam, llamaguard")
    p.add_argument("--judge-model", action="append", default=[], metavar="JUDGE=PATH",
                   help="local weights of a model judge, e.g. beaverdam=/models/beaver-dam-7b (repeatable)")
    p.add_argument("--tasks", default="sst2", help="comma-separated tasks for accuracy (sst2, agnews, gsm8k; '' for none)")
    p.add_argument("--n-task", type=int, default=100, help="test rows per task (the first N)")
    p.add_argument("--rule", default="substring", choices=["substring", "exact"], help="classification scoring rule")
    p.add_argument("--batch-size", type=int, default=16, help="generation batch size")
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens for harmful prompts")
    p.add_argument("--prompt-style", choices=["chat", "alpaca"], help="default: as the model was trained")
    p.add_argument("--system-prompt", help="system prompt for the chat style")
    p.add_argument("--backend", default="hf", choices=BACKENDS,
                   help="generation backend: hf (batched transformers) or vllm (pip install clinic[vllm]; "
                   "falls back to hf with a warning when vllm is missing)")
    p.set_defaults(func=cmd_evaluate)


def _judges(names: list[str], paths: list[str]) -> dict | None:
    """The judges of ``names`` with the weights given by ``--judge-model JUDGE=PATH`` (None: defaults)."""
    if not paths:
        return None
    from .evaluation.judges import get_judge

    given = {}
    for item in paths:
        judge, sep, path = item.partition("=")
        if not sep or not path:
            raise ClinicError(f"--judge-model {item!r} must look like JUDGE=PATH")
        if judge not in names:
            raise ClinicError(f"--judge-model names {judge}, which is not among --judges ({', '.join(names)})")
        given[judge] = path
    return {name: get_judge(name, **({"model_path": given[name]} if name in given else {})) for name in names}


def _split(value: str) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def cmd_evaluate(args) -> None:
    from .pipeline import EvalConfig, read_metrics, run_evaluate

    cfg = EvalConfig(
        harmful_sets=_split(args.harmful_prompts), n_prompts=args.n_prompts, judges=_split(args.judges),
        tasks=_split(args.tasks), n_task=args.n_task, task_rule=args.rule, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, prompt_style=args.prompt_style, system_prompt=args.system_prompt,
        backend=args.backend,
    )
    from .rundir import check_output_dir

    check_output_dir(args.output, args.overwrite)  # before loading any judge model
    out = run_evaluate(args.model, cfg, args.output, overwrite=args.overwrite, judges=_judges(cfg.judges, args.judge_model))
    from .report import metrics_lines

    print("\n".join(metrics_lines(read_metrics(out))))
    print(f"evaluation written to {out}")


def _add_demo(sub):
    from .demo import DemoConfig

    p = sub.add_parser("demo", help=COMMAND_HELP["demo"],
                       description="On SmolLM2-135M-Instruct: measure harmful score (two judges) and SST2 accuracy of "
                       "the base model, SFT-align it on refusals, measure, harmful-fine-tune it (SST2, p=0.1), measure; "
                       "print the table and write everything to the output directory.")
    p.add_argument("--output", help="demo directory (default runs/demo-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo directory")
    add_dataclass_options(p.add_argument_group("demo settings"), DemoConfig)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> None:
    from .demo import DemoConfig, run_demo

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig) if getattr(args, f.name) is not None}
    output = args.output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    run_demo(DemoConfig(**values), output, overwrite=args.overwrite)


def _add_methods(sub):
    p = sub.add_parser("methods", help="List the registered methods")
    p.set_defaults(func=cmd_methods)


def cmd_methods(_args) -> None:
    from .methods.base import methods_for

    from .repair import repair_methods

    for stage in ("align", "finetune", "repair"):
        print(f"{stage}:")
        for name, spec in (repair_methods() if stage == "repair" else methods_for(stage)).items():
            print(f"  {name:10s} {spec.summary}")


def _add_data(sub):
    p = sub.add_parser("data", help="List the named datasets and where each is found")
    p.set_defaults(func=cmd_data)


def cmd_data(_args) -> None:
    from .data.sources import SOURCES
    from .settings import data_dir

    print(f"data directory: {data_dir() or '(unset: set CLINIC_DATA_DIR)'}")
    for name, source in SOURCES.items():
        local = source.local_file()
        where = str(local) if local else (f"hub {source.hub[0]}" if source.hub else "missing")
        print(f"  {name:28s} {source.kind:15s} {where}")


# The one-line help of the commands whose options come from torch-importing modules (the method
# registry, DemoConfig, clinic.sink, the selector registry). Their full parsers are built only for
# the command chosen: `clinic --help` took 11.2 s on the 2-core CPU when every parser was built
# (torch, TRL and PEFT imports) and takes 0.1 s this way; `clinic data` and `clinic report` gain
# the same.
COMMAND_HELP = {
    "align": "Safety-align a model",
    "finetune": "Fine-tune a model on user data (the attack)",
    "demo": "Align, attack and measure the embedded SmolLM2 model (about 12 minutes on 2 cores)",
    "sink": "Per-head sink divergence (harmful vs harmless) of a model or of every checkpoint of a run",
    "curate": "Select a core subset of the alignment data (Pharmacist-like selector and baselines)",
    "repair": "Repair a LoRA fine-tuned model after fine-tuning (SafeLoRA, Antidote, Panacea)",
}


def chosen_command(argv: list[str] | None) -> str | None:
    """The sub-command named on the command line (the top-level parser has no option taking a value)."""
    argv = sys.argv[1:] if argv is None else argv
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; of the heavy commands only ``command``'s parser is built in full (``None``: none)."""
    parser = Parser(prog="clinic", description="Defend LLM fine-tuning against harmful fine-tuning: "
                    "curate -> align -> finetune -> repair -> evaluate -> report.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    commands = [
        ("align", lambda s: _add_train_command(s, "align")),
        ("finetune", lambda s: _add_train_command(s, "finetune")),
        ("evaluate", _add_evaluate),
        ("demo", _add_demo),
        ("methods", _add_methods),
        ("data", _add_data),
        ("sink", _sink_command),
        ("run", _run_commands),  # also adds `report`
        ("curate", lambda s: add_curate_command(s, help_text=COMMAND_HELP["curate"])),
        ("repair", _repair_command),
    ]
    for name, add in commands:
        if name in COMMAND_HELP and name != command:
            sub.add_parser(name, help=COMMAND_HELP[name])  # listed in the help; never parsed, not being chosen
        else:
            add(sub)
    return parser


def _repair_command(sub):
    from .repair import add_repair_command

    add_repair_command(sub, help_text=COMMAND_HELP["repair"])


def _sink_command(sub):
    from .sink import add_sink_command

    add_sink_command(sub, help_text=COMMAND_HELP["sink"])


def _run_commands(sub):
    p = sub.add_parser("run", help="Run (or resume) an experiment file: a grid of curate/align/finetune/evaluate/sink "
                       "stages, shared by config hash", description="Run or resume an experiment. Finished stages are "
                       "skipped; a stage killed mid-way restarts from its beginning. See docs/experiments.md.")
    p.add_argument("experiment", help="experiment YAML file (see configs/)")
    p.add_argument("--output", help="experiment directory (default runs/<experiment name>)")
    p.add_argument("--store", help="stage store shared between experiments (default <output>/stages)")
    p.add_argument("--dry-run", action="store_true", help="print the stages and whether each is done, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.set_defaults(func=cmd_run)
    r = sub.add_parser("report", help="Tables, figures and a self-contained HTML report for an experiment directory")
    r.add_argument("run_dir", help="experiment directory written by `clinic run`")
    r.add_argument("--output", help="report directory (default RUN_DIR/report)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing report directory")
    r.add_argument("--guard-points", type=float, default=5.0, metavar="POINTS",
                   help="adaptive attacker: an attack counts when its fine-tune accuracy is within POINTS of the "
                        "defence's best attack (default 5)")
    r.add_argument("--guard-fa", type=float, default=None, metavar="PERCENT",
                   help="adaptive attacker: count the attacks with fine-tune accuracy >= PERCENT instead")
    r.set_defaults(func=cmd_report)


def cmd_run(args) -> None:
    from .experiment import run_experiment

    run_experiment(args.experiment, args.output, args.store, dry_run=args.dry_run, report=not args.no_report)


def cmd_report(args) -> None:
    from .adaptive import Guard
    from .report import write_report

    guard = Guard(args.guard_points, args.guard_fa)  # checked before anything is written
    write_report(args.run_dir, args.output, overwrite=args.overwrite, guard=guard)


def _set_threads() -> None:
    """Apply :func:`clinic.settings.torch_threads`; say so when clinic chose fewer threads than torch would."""
    threads, reason = torch_threads()
    if threads is None:
        return
    import torch

    if threads != torch.get_num_threads():
        if not os.environ.get("CLINIC_THREADS"):
            print(f"clinic: {reason}", file=sys.stderr)
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser(chosen_command(argv))
    args = parser.parse_args(argv)
    try:
        if args.command in COMPUTE_COMMANDS:
            _set_threads()
        args.func(args)
    except ClinicError as exc:
        print(f"clinic: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clinic: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
