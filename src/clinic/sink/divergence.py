"""Sink divergence of one model: which attention heads look more at the sink on harmful text.

For every layer ``l`` and query head ``h``::

    d_{l,h} = mean over harmful samples of a_{l,h}(x)  −  mean over harmless samples of a_{l,h}(x)

with ``a`` the exact sink attention of :mod:`clinic.modeling.attention` (the sink is the first token of
each sample + ``sink_index``; queries are the real tokens after it). Samples are formatted as the
Surgery reference formats its probes (:func:`probe_ids`): the chat template with ``[user: prompt,
assistant: response]`` and **no system message**, truncated to ``max_length`` tokens; a tokenizer
without a chat template gets the Alpaca prompt + response + EOS. Batches are right-padded;
padding never enters a mean, so batching does not change the result.

:func:`sink_divergence` → ``[L, H]`` tensor (:func:`sink_attention_per_sample` keeps each
sample's ``[L, H]`` values); :func:`positive_head_count` counts ``d > 0``;
:func:`histogram` bins the divergences symmetrically around 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.samples import Sample, pad_batch, probe_ids
from ..errors import ClinicError
from ..modeling.attention import sink_attention_values

DEFAULT_HARMFUL = "beavertails-harmful"
DEFAULT_HARMLESS = "beavertails-harmless"


def _device(model) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------
# divergence


def sink_attention_per_sample(model, tokenizer, samples: Sequence[Sample], batch_size: int = 8, sink_index: int = 0,
                              max_length: int = 512, mode: str = "fixed") -> torch.Tensor:
    """``[N, L, H]``: each sample's per-head sink attention, in the order of ``samples`` (what the
    bootstrap of :mod:`clinic.sink.bootstrap` resamples)."""
    if not samples:
        raise ClinicError("sink analysis needs at least one sample of each kind")
    if batch_size < 1:
        raise ClinicError(f"batch size must be at least 1, got {batch_size}")
    # Batches of similar lengths waste less on padding; each row is put back in its place after.
    seqs = [probe_ids(tokenizer, s, max_length) for s in samples]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    rows: list[torch.Tensor | None] = [None] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                ids, mask = pad_batch(tokenizer, [seqs[i] for i in chunk], device=_device(model))
                values = sink_attention_values(model, ids, mask, sink_index=sink_index, mode=mode)  # [L, B, H]
                for j, i in enumerate(chunk):
                    rows[i] = values[:, j].float().cpu()
    except ValueError as exc:  # e.g. a sink index past a sample's end
        raise ClinicError(str(exc)) from None
    finally:
        model.train(was_training)
    return torch.stack(rows)


def sink_attention_means(model, tokenizer, samples: Sequence[Sample], batch_size: int = 8, sink_index: int = 0,
                         max_length: int = 512, mode: str = "fixed") -> torch.Tensor:
    """``[L, H]``: per-head sink attention averaged over ``samples`` (each sample weighs the same)."""
    return sink_attention_per_sample(model, tokenizer, samples, batch_size, sink_index, max_length, mode).mean(dim=0)


def sink_divergence(model, tokenizer, harmful: Sequence[Sample], harmless: Sequence[Sample], batch_size: int = 8,
                    sink_index: int = 0, max_length: int = 512, mode: str = "fixed") -> torch.Tensor:
    """``[L, H]`` sink divergence: mean sink attention on ``harmful`` minus on ``harmless``."""
    a_m = sink_attention_means(model, tokenizer, harmful, batch_size, sink_index, max_length, mode)
    a_r = sink_attention_means(model, tokenizer, harmless, batch_size, sink_index, max_length, mode)
    return a_m - a_r


def positive_head_count(divergence: torch.Tensor) -> int:
    """Number of heads with strictly positive sink divergence."""
    return int((divergence > 0).sum().item())


def histogram(divergence: torch.Tensor, bins: int = 40) -> dict:
    """A histogram of the divergences, symmetric around 0 (so the sign split is a bin edge)."""
    values = divergence.flatten().double()
    bound = float(values.abs().max().item()) or 1e-6
    counts = torch.histc(values, bins=bins, min=-bound, max=bound)
    edges = torch.linspace(-bound, bound, bins + 1)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
