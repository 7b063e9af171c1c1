"""Data curation before alignment: score the alignment data, keep a core subset (``clinic curate``).

- :mod:`.stage`: :class:`CurateConfig` and :func:`run_curate` (the stage; its command is :mod:`clinic.cli.curate`);
- :mod:`.base`: the selector registry and the context selectors get;
- :mod:`.pharmacist`: the Pharmacist-like bilevel selector (ours; the paper's objective is
  unpublished, see ``docs/methods/pharmacist.md``);
- :mod:`.baselines`: random, full, highest/lowest loss, gradient norm, LESS-like, diversity;
- :mod:`.gradients`: per-sample LoRA gradients from one batched backward, random projections.
"""

from .stage import CurateConfig, curate_config, run_curate, run_curate_stage

__all__ = ["CurateConfig", "curate_config", "run_curate", "run_curate_stage"]
