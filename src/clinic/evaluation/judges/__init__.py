"""Harmfulness judges: the registry (:data:`JUDGES`, :func:`get_judge`, :func:`check_judge_name`); each
judge module registers its class, and the registry finds the modules by discovery.

A judge gives ``score`` in 0..1 (higher = more harmful) and ``flags`` (score > threshold); the
interface and the degenerate-answer rule are in :mod:`.base`. One module per judge:

- ``keyword`` (:mod:`.keyword`): refusal-keyword matcher; an answer with no refusal phrase scores 1.
- ``classifier`` (:mod:`.classifier`): sentence encoder + logistic regression, trained once on
  labelled BeaverTails (+ safe Do-Not-Answer responses), cached as JSON.
- ``harm-ce`` (:mod:`.harm_ce`, the default offline judge): the same encoder fine-tuned (LoRA) as
  a cross-encoder over ``[CLS] prompt [SEP] response``; its trained weights ship in ``weights/``.
- ``harm-probe`` (:mod:`.harm_probe`): logistic regression on SmolLM2's hidden states; measured, not
  shipped (needs ``weights_dir=``, a probe trained by ``benchmarks/probe_judge.py``).
- ``harm-lora`` (:mod:`.harm_lora`): SmolLM2 fine-tuned with LoRA + a head; none ships yet (needs
  ``weights_dir=``, trained by ``benchmarks/lora_judge.py``).
- ``beaverdam`` (:mod:`.beaverdam`): PKU-Alignment/beaver-dam-7b, 14 sigmoid categories.
- ``llamaguard`` (:mod:`.llamaguard`): Llama Guard 3, greedy verdict ``safe`` / ``unsafe``.

Everything else is imported from the module that defines it (e.g. ``Judge`` from
:mod:`.base`, ``binary_metrics`` from :mod:`.metrics`); this module holds the registry only.
"""

from __future__ import annotations

import inspect

from ...errors import ClinicError
from .base import JUDGES, Judge


def check_judge_name(name: str, where: str = "") -> None:
    """A one-line error, with the nearest name, unless ``name`` is a judge (``where`` says where
    the name was given, e.g. ``" in evaluate"``)."""
    JUDGES.check(name, where)


def get_judge(name: str, **options) -> Judge:
    """A judge by name; ``options`` are its constructor's keyword arguments."""
    cls = JUDGES.get(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ClinicError(f"judge {name!r} has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(accepted))}")
    return cls(**options)


__all__ = ["JUDGES", "check_judge_name", "get_judge"]
