"""The training callback: the positive-sink-head count recorded during fine-tuning."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainerCallback

from ..data.samples import Sample
from ..errors import ClinicError
from .divergence import DEFAULT_HARMFUL, DEFAULT_HARMLESS, positive_head_count, sink_divergence


class SinkCountCallback(TrainerCallback):
    """Record the positive-sink-head count every ``every`` optimizer steps (and at step 0).

    The probe samples are ``harmful`` / ``harmless``, or, when not given, the first ``n`` rows of
    ``harmful_source`` / ``harmless_source`` (loaded when training starts). Each record
    ``{"step", "sink_positive_heads", "sink_total_heads"}`` is appended to the trainer's
    ``state.log_history`` (so it lands in ``train_log.jsonl``), to ``self.records``, and, when
    ``path`` is given, as one line of that JSONL file.
    """

    def __init__(self, harmful: Sequence[Sample] | None = None, harmless: Sequence[Sample] | None = None,
                 every: int = 50, n: int = 32, harmful_source: str = DEFAULT_HARMFUL,
                 harmless_source: str = DEFAULT_HARMLESS, tokenizer=None, path: str | Path | None = None,
                 batch_size: int = 8, sink_index: int = 0, max_length: int = 512, at_start: bool = True):
        if every < 1:
            raise ClinicError(f"the sink-count interval must be at least 1 step, got {every}")
        if n < 1:
            raise ClinicError(f"the sink-count callback needs at least 1 sample of each kind, got {n}")
        self.harmful = list(harmful) if harmful is not None else None
        self.harmless = list(harmless) if harmless is not None else None
        self.n, self.harmful_source, self.harmless_source = n, harmful_source, harmless_source
        self.every, self.tokenizer, self.path = every, tokenizer, Path(path) if path else None
        self.batch_size, self.sink_index, self.max_length, self.at_start = batch_size, sink_index, max_length, at_start
        self.records: list[dict] = []

    def _samples(self) -> tuple[list[Sample], list[Sample]]:
        from ..data.mixture import take_qa

        if self.harmful is None:
            self.harmful = take_qa(self.harmful_source, self.n)[0]
        if self.harmless is None:
            self.harmless = take_qa(self.harmless_source, self.n)[0]
        return self.harmful, self.harmless

    def _record(self, state, model, tokenizer) -> None:
        tokenizer = self.tokenizer or tokenizer
        if tokenizer is None or model is None:
            return
        harmful, harmless = self._samples()
        d = sink_divergence(model, tokenizer, harmful, harmless, self.batch_size, self.sink_index, self.max_length)
        row = {"step": int(state.global_step), "sink_positive_heads": positive_head_count(d),
               "sink_total_heads": int(d.numel())}
        self.records.append(row)
        state.log_history.append(dict(row))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    @staticmethod
    def _tok(kwargs):
        return kwargs.get("processing_class") or kwargs.get("tokenizer")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.at_start and state.global_step == 0:
            self._record(state, model, self._tok(kwargs))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0 and state.global_step % self.every == 0:
            self._record(state, model, self._tok(kwargs))
