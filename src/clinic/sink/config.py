"""The settings of a sink analysis, shared by ``clinic sink`` and the experiment file's ``sink``
block: below both, so that the experiment runner need not import the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..modeling.attention import SINK_MODES
from ..values import check_fields


@dataclass
class SinkConfig:
    """The settings of :func:`clinic.sink.run_sink_analysis`, under its keyword names: the options
    of ``clinic sink`` and the keys of an experiment file's ``sink`` block (plus ``aligned``) are
    these fields, validated here (types, choices, ranges: :func:`clinic.values.check_fields`)."""

    n: int = field(default=100, metadata={"help": "samples of each kind", "range": (1, None)})
    batch_size: int = field(default=8, metadata={"help": "batch size", "range": (1, None)})
    sink_index: int = field(default=0, metadata={"help": "sink = first token + this offset", "range": (0, None)})
    mode: str = field(default="fixed", metadata={
        "help": "fixed index, or each sample's most attended position", "choices": SINK_MODES, "label": "sink mode"})
    max_length: int = field(default=512, metadata={"help": "truncate samples to this many tokens", "range": (2, None)})
    harmful_source: str = field(default="beavertails-harmful", metadata={"help": "harmful QA data"})
    harmless_source: str = field(default="beavertails-harmless", metadata={
        "help": "harmless/safe QA data ('refusals' for refusal answers)"})
    scores: str | None = field(default=None, metadata={
        "help": "JSON of harmful scores by step ({step: score}) or an evaluation metrics.json"})
    seed: int = field(default=0, metadata={"help": "seed of the sample draw (with selection random) and the bootstrap"})
    selection: str = field(default="first", metadata={"help": "which n rows: the first or a seeded random draw",
                                                      "choices": ("first", "random")})

    def __post_init__(self):
        check_fields(self, "sink setting ")
