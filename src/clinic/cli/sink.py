"""``clinic sink``: per-head sink divergence of a model or of every checkpoint of a run
(:func:`clinic.sink.run_sink_analysis`)."""

from __future__ import annotations

from ..settings import LOGGER

import dataclasses
import json

from ..sink.config import SinkConfig
from .options import ConfigParser, add_execution, execution

RENAMED = {"--sink-mode": "--mode"}  # old spellings, still accepted


def parser(name: str) -> ConfigParser:
    from . import COMMANDS

    p = ConfigParser(prog=f"clinic {name}", description=f"{COMMANDS[name][1]}: sink divergence d[l,h] = mean sink "
                     "attention on harmful QA - on harmless QA, per layer and head; writes CSV, JSON and figures.")
    p.add_argument("--model", required=True, help="model name/path, or a run directory (all its checkpoints)")
    p.add_output("output directory")
    p.add_dataclass(SinkConfig, "sink analysis")
    add_execution(p)
    p.deprecate(RENAMED)
    return p


def run(args) -> None:
    from ..stages.sink import run_sink_analysis

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(SinkConfig)}
    out = run_sink_analysis(args.model, args.output, overwrite=args.overwrite, **settings, **execution(args))
    summary = json.loads((out / "sink.json").read_text())
    for e in summary["entries"]:
        LOGGER.info(f"{e['label']:>12}: {e['positive_heads']}/{e['total_heads']} heads with positive sink divergence")
    LOGGER.info(f"wrote {out}")
