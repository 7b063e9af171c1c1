"""The settings of a sink analysis, shared by ``clinic sink`` and the experiment file's ``sink``
block: below both, so that the experiment runner need not import the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..modeling.attention import SINK_MODES


@dataclass
class SinkConfig:
    """The settings of :func:`clinic.sink.run_sink_analysis`, under its keyword names: the options
    of ``clinic sink`` and the keys of an experiment file's ``sink`` block (plus ``aligned``) are
    these fields. Validated there (and, for an experiment, by :func:`clinic.experiment.plan.check_sink`)."""

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
