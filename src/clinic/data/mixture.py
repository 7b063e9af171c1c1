"""The harmful fine-tuning set: n samples, a fraction p harmful, the rest a benign task.

``round(p * n)`` harmful (prompt, harmful answer) pairs are drawn without replacement from the
harmful pool, and ``n - round(p * n)`` benign samples from the task's training rows, both with
one seeded generator. The reference code takes the *first* rows instead (``selection="first"``
reproduces that). The chosen row indices are returned so a run can record them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import ClinicError
from .samples import Sample
from .sources import load_rows
from .tasks import get_task

SELECTIONS = ("random", "first")


@dataclass
class AttackSet:
    samples: list[Sample]
    is_harmful: list[bool]
    indices: dict[str, list[int]] = field(default_factory=dict)  # source name -> row indices

    def manifest(self) -> dict:
        return {
            "n": len(self.samples),
            "n_harmful": sum(self.is_harmful),
            "indices": self.indices,
        }


def check_mixture_args(n: int, poison_ratio: float) -> None:
    if not isinstance(n, int) or n <= 0:
        raise ClinicError(f"sample count n must be a positive integer, got {n!r}")
    if not 0.0 <= poison_ratio <= 1.0:
        raise ClinicError(f"poison ratio p must be within [0, 1], got {poison_ratio}")


def pick(rows_available: int, k: int, rng: random.Random, selection: str, what: str) -> list[int]:
    """Indices of ``k`` rows out of ``rows_available``, seeded or the first ``k``."""
    if k > rows_available:
        raise ClinicError(f"asked for {k} {what} samples but only {rows_available} are available")
    if selection == "first":
        return list(range(k))
    if selection != "random":
        raise ClinicError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    return sorted(rng.sample(range(rows_available), k))


def qa_sample(row: dict) -> Sample:
    return Sample(row["prompt"], row.get("input", ""), row["response"])


def build_attack_set(
    task: str,
    n: int,
    poison_ratio: float,
    seed: int = 0,
    harmful_source: str = "beavertails-harmful",
    selection: str = "random",
) -> AttackSet:
    """The user's fine-tuning data for a harmful fine-tuning attack (§6.3)."""
    check_mixture_args(n, poison_ratio)
    task_obj = get_task(task)
    n_harmful = round(poison_ratio * n)
    n_benign = n - n_harmful
    rng = random.Random(seed)
    harmful_rows = load_rows(harmful_source, kind="qa") if n_harmful else []
    benign_rows = task_obj.train_rows() if n_benign else []
    h_idx = pick(len(harmful_rows), n_harmful, rng, selection, f"harmful ({harmful_source})")
    b_idx = pick(len(benign_rows), n_benign, rng, selection, f"benign ({task})")
    samples = [qa_sample(harmful_rows[i]) for i in h_idx] + [task_obj.sample(benign_rows[i]) for i in b_idx]
    flags = [True] * len(h_idx) + [False] * len(b_idx)
    return AttackSet(samples, flags, {harmful_source: h_idx, task_obj.train_source: b_idx})


def take_qa(source: str, n: int | None, seed: int = 0, selection: str = "first", skip: int = 0) -> tuple[list[Sample], list[int]]:
    """``n`` (prompt, response) samples of a QA source (alignment data, harmful probes)."""
    rows = load_rows(source, kind="qa")
    rows = rows[skip:]
    k = len(rows) if n is None else n
    idx = pick(len(rows), k, random.Random(seed), selection, source)
    return [qa_sample(rows[i]) for i in idx], [i + skip for i in idx]
