"""Evaluation splits: the ``test`` rows every published number uses, and a ``validation`` slice
that a defence search (or the adaptive attacker) may choose on without touching them.

``test`` is what evaluation has always taken: the first N rows of each prompt set and task.
``validation`` starts where no protocol test reaches (:data:`VALIDATION_START`), so the two are
disjoint for every test of up to that many rows, and it keeps only rows nothing in clinic trains
or measures on:

- ``beavertails-test``: only prompts in the judges' held-out half (:func:`heldout_prompt`), so no
  judge saw BeaverTails' own answers to them (the judges train on the other half, and the read
  training answers of ``benchmarks/judge_train`` use other-half prompts too). The source already
  drops every prompt of the alignment and attack files (``clinic.data.sources``).
- tasks (SST2, AG News, GSM8K): rows of the task's evaluation file from :data:`VALIDATION_START`
  on; fine-tuning reads the training file.
- the free-text guard's AlpacaEval instructions from :data:`VALIDATION_START` on; XSTest's safe
  prompts from 200 on (it has 250: the protocol's over-refusal test takes the first 200).

Other harmful prompt sets have no validation slice: their later rows trained the judges
(docs/judges.md, "The read answers"), so asking for one is an error that says so.
"""

from __future__ import annotations

import hashlib

from ..errors import ClinicError

SPLITS = ("test", "validation")

#: First row of the validation slice: the protocol tests the first 200; a test of up to 400 rows
#: stays disjoint from it.
VALIDATION_START = 400

#: Where a set's validation slice starts, when not at :data:`VALIDATION_START`.
_STARTS = {"xstest-safe": 200}

#: Prompt sets with a validation slice (others: see the module docstring).
VALIDATION_PROMPT_SETS = ("beavertails-test",)


def heldout_prompt(prompt: str) -> bool:
    """Whether a BeaverTails 30k_test prompt belongs to the judges' held-out half (by prompt hash,
    so every answer to one prompt falls on the same side)."""
    return hashlib.sha256(prompt.strip().encode("utf-8")).digest()[0] % 2 == 0


def validation_start(name: str) -> int:
    return _STARTS.get(name, VALIDATION_START)


def split_rows(rows: list[dict], n: int, split: str, name: str, what: str = "rows") -> list[dict]:
    """The ``n`` rows of ``split`` from ``rows`` (the whole set ``name``, in file order).

    ``what`` names the rows in the error when the split has fewer than ``n``."""
    if split not in SPLITS:
        raise ClinicError(f"unknown evaluation split {split!r}; choose from {', '.join(SPLITS)}")
    if split == "validation":
        rows = rows[validation_start(name):]
        if name == "beavertails-test":
            rows = [r for r in rows if heldout_prompt(r["prompt"])]
    if n > len(rows):
        raise ClinicError(f"asked for {n} {what} but {name} has only {len(rows)} in its {split} split")
    return rows[:n]


def check_prompt_split(name: str, split: str) -> None:
    """A harmful prompt set must have a validation slice to be evaluated on one."""
    if split == "validation" and name not in VALIDATION_PROMPT_SETS:
        raise ClinicError(f"prompt set {name!r} has no validation split (its later rows trained the judges); "
                          f"validate on {', '.join(VALIDATION_PROMPT_SETS)}")
