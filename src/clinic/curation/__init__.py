"""Data curation before alignment: score the alignment data, keep a core subset (``clinic curate``).

- :mod:`.base`: the selector registry and the context selectors get;
- :mod:`.pharmacist`: the Pharmacist-like bilevel selector (ours; the paper's objective is
  unpublished, see ``docs/methods/pharmacist.md``);
- :mod:`.baselines`: random, full, highest/lowest loss, gradient norm, LESS-like, diversity.

The stage (:class:`~clinic.stages.curate.CurateConfig`, :func:`~clinic.stages.curate.run_curate`)
is :mod:`clinic.stages.curate`, its command :mod:`clinic.cli.curate`; the per-sample gradients and
projections the selectors use are :mod:`clinic.modeling.gradients` and
:mod:`clinic.modeling.workspace` (shared with the repair methods).
"""
