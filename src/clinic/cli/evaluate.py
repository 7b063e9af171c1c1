"""``clinic evaluate``: harmful score and fine-tune accuracy of a model (:class:`clinic.stages.evaluate.EvalConfig`)."""

from __future__ import annotations

from ..settings import LOGGER

import dataclasses

from ..errors import ClinicError
from .options import ConfigParser, add_execution, execution, values

RENAMED = {"--harmful-prompts": "--harmful-sets", "--rule": "--task-rule"}  # old spellings, still accepted


def parser(name: str) -> ConfigParser:
    from ..stages.evaluate import EvalConfig
    from . import COMMANDS

    p = ConfigParser(prog=f"clinic {name}", description=f"{COMMANDS[name][1]}: generate answers to harmful prompts "
                     "and task questions, score them, and write generations.jsonl and metrics.json to a run directory.")
    p.add_argument("--model", required=True, help="model name/path or a run directory")
    p.add_output()
    p.add_argument("--judge-model", action="append", default=[], metavar="JUDGE=PATH",
                   help="local weights of a model judge, e.g. beaverdam=/models/beaver-dam-7b (repeatable)")
    p.add_dataclass(EvalConfig, "evaluation")
    add_execution(p, generation=True)
    p.deprecate(RENAMED)
    return p


def _judge_models(names: list[str], paths: list[str]) -> dict[str, str]:
    """``{judge: local weights}`` from ``--judge-model JUDGE=PATH`` (checked before anything loads)."""
    given = {}
    for item in paths:
        judge, sep, path = item.partition("=")
        if not sep or not path:
            raise ClinicError(f"--judge-model {item!r} must look like JUDGE=PATH")
        if judge not in names:
            raise ClinicError(f"--judge-model names {judge}, which is not among --judges ({', '.join(names)})")
        given[judge] = path
    return given


def run(args) -> None:
    from ..report.tables import metrics_lines
    from ..rundir import read_metrics
    from ..stages import execute
    from ..stages.evaluate import EvalConfig

    cfg = EvalConfig(**values(args, [f.name for f in dataclasses.fields(EvalConfig)]))
    out = execute("evaluate", cfg, output=args.output, model=args.model, overwrite=args.overwrite,
                  judge_models=_judge_models(cfg.judges, args.judge_model), **execution(args))
    LOGGER.info("\n".join(metrics_lines(read_metrics(out))))
    LOGGER.info(f"evaluation written to {out}")
