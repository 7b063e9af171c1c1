"""Sink-divergence analysis: which attention heads look more at the sink on harmful text.

One module per concern:

- :mod:`.divergence`: probe formatting and the measure, ``d[l, h]`` = mean sink attention on
  harmful minus on harmless samples (:func:`~.divergence.sink_divergence`,
  :func:`~.divergence.positive_head_count`, :func:`~.divergence.histogram`);
- :mod:`.plots`: those figures;
- :mod:`.callback`: :class:`SinkCountCallback`, the positive-head count every k training steps;
- :mod:`.config`: :class:`~.config.SinkConfig`, the analysis settings (``clinic sink`` options and
  the experiment file's ``sink`` keys);

The analysis as a stage (one model or every checkpoint of a fine-tuning run, written as CSV +
JSON + figures) is :mod:`clinic.stages.sink`; the ``clinic sink`` command is :mod:`clinic.cli.sink`.

This module re-exports only the callback the training command uses; everything else is imported
from the module that defines it.
"""

from __future__ import annotations

from .callback import SinkCountCallback

__all__ = ["SinkCountCallback"]
