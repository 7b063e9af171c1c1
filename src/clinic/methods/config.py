"""The base of each method's hyper-parameters (:class:`MethodConfig`, with
:class:`HarmfulStreamConfig` for the methods that also train on harmful data). The training
settings every method shares are :class:`clinic.modeling.training.TrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

STAGES = ("align", "finetune")


@dataclass
class MethodConfig:
    """Hyper-parameters of a method. Subclasses add fields (with ``metadata={"help": ...}``).

    ``streams`` maps an extra data stream's name to the names of the fields holding its source
    and its size, e.g. ``{"harmful": ("harmful_source", "harmful_size")}``.
    """

    streams: ClassVar[dict[str, tuple[str, str]]] = {}

    def stream_specs(self) -> dict[str, tuple[str, int | None]]:
        return {name: (getattr(self, src), getattr(self, size)) for name, (src, size) in self.streams.items()}


@dataclass
class HarmfulStreamConfig(MethodConfig):
    """A method that also trains on harmful (prompt, harmful answer) pairs: the ``harmful``
    stream, its source and its size (the same flat field names in every such method, so that
    YAML keys and CLI options are ``harmful_source`` / ``harmful_size`` everywhere, as the attack's
    harmful rows are ``harmful_source`` in the fine-tuning data; the old key ``harmful_data`` is
    still read, and is the name the stage hashes keep)."""

    harmful_source: str = field(default="beavertails-harmful", metadata={
        "help": "harmful (prompt, harmful answer) pairs", "hash_name": "harmful_data", "aliases": ("harmful_data",)})
    harmful_size: int = field(default=2000, metadata={"help": "number of harmful pairs"})

    streams: ClassVar[dict[str, tuple[str, str]]] = {"harmful": ("harmful_source", "harmful_size")}
