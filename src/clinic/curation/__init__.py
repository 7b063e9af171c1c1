"""Data curation before alignment: score the alignment data, keep a core subset (``clinic curate``).

- :mod:`.stage`: :class:`CurateConfig` and :func:`run_curate` (the stage; its command is :mod:`clinic.cli.curate`);
- :mod:`.base`: the selector registry and the context selectors get;
- :mod:`.pharmacist`: the Pharmacist-like bilevel selector (ours; the paper's objective is
  unpublished, see ``docs/methods/pharmacist.md``);
- :mod:`.baselines`: random, full, highest/lowest loss, gradient norm, LESS-like, diversity;
- :mod:`.gradients`: per-sample LoRA gradients from one batched backward, random projections.
"""

# Nothing is imported here: the stage (clinic.curation.stage) runs models through clinic.pipeline,
# a layer above the selectors, and importing clinic.curation.gradients (as repair does) must not
# pull it in (tests/test_layers.py).
