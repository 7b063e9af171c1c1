"""``clinic sink``: per-head sink divergence of a model or of every checkpoint of a run
(:func:`clinic.sink.run_sink_analysis`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ..modeling.attention import SINK_MODES
from .options import ConfigParser

RENAMED = {"--sink-mode": "--mode"}  # old spellings, still accepted


@dataclass
class SinkConfig:
    """The settings of :func:`clinic.sink.run_sink_analysis`, under its keyword names (which are the
    experiment file's ``sink`` keys). Validated there. Here, not in :mod:`clinic.sink`, until that
    module is split into a package (its analysis part is the natural home)."""

    n: int = field(default=100, metadata={"help": "samples of each kind"})
    batch_size: int = field(default=8, metadata={"help": "batch size"})
    sink_index: int = field(default=0, metadata={"help": "sink = first token + this offset"})
    mode: str = field(default="fixed", metadata={
        "help": "fixed index, or each sample's most attended position", "choices": SINK_MODES})
    max_length: int = field(default=512, metadata={"help": "truncate samples to this many tokens"})
    harmful_source: str = field(default="beavertails-harmful", metadata={"help": "harmful QA data"})
    harmless_source: str = field(default="beavertails-harmless", metadata={
        "help": "harmless/safe QA data ('refusals' for refusal answers)"})
    scores: str | None = field(default=None, metadata={
        "help": "JSON of harmful scores by step ({step: score}) or an evaluation metrics.json"})


def parser(name: str) -> ConfigParser:
    from . import COMMANDS

    p = ConfigParser(prog=f"clinic {name}", description=f"{COMMANDS[name][1]}: sink divergence d[l,h] = mean sink "
                     "attention on harmful QA - on harmless QA, per layer and head; writes CSV, JSON and figures.")
    p.add_argument("--model", required=True, help="model name/path, or a run directory (all its checkpoints)")
    p.add_output("output directory")
    p.add_dataclass(SinkConfig, "sink analysis")
    p.deprecate(RENAMED)
    return p


def run(args) -> None:
    from ..sink import run_sink_analysis

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(SinkConfig)}
    out = run_sink_analysis(args.model, args.output, overwrite=args.overwrite, **settings)
    summary = json.loads((out / "sink.json").read_text())
    for e in summary["entries"]:
        print(f"{e['label']:>12}: {e['positive_heads']}/{e['total_heads']} heads with positive sink divergence")
    print(f"wrote {out}")
