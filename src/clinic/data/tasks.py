"""Benign fine-tuning tasks: how a row becomes a sample, and how an answer is scored.

Prompt strings are the reference code's, verbatim (docs/reference/algorithms.md §7.3). Two scoring rules for
the classification tasks:

- ``substring`` (T-Vaccine / Vaccine / Booster): correct when the label word appears in the
  output (``positive``/``Positive``; AGNews label name or a lowercase variant, ``sci`` for
  Sci/Tech);
- ``exact`` (Surgery): SST2 correct when the stripped, lowercased output *equals* the label;
  AGNews uses the lowercase substring rule in both.

GSM8K: commas removed; the first number after ``The final answer is: `` if present, else the
last number in the text; compared as floats with the reference answer extracted the same way.
"""

from __future__ import annotations

import re

from ..errors import ClinicError
from ..registry import Registry
from .samples import Sample
from .sources import load_rows

SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"
AGNEWS_INSTRUCTION = (
    "Categorize the news article given in the input into one of the 4 categories:\n\nWorld\nSports\nBusiness\nSci/Tech\n"
)
GSM8K_MARKER = "The final answer is: "
GSM8K_SUFFIX_TVACCINE = "\nFirst think step by step and then answer the final number.\n"
AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
SST2_LABELS = ("negative", "positive")
SCORING_RULES = ("substring", "exact")

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_number(text: str) -> float | None:
    """GSM8K answer extraction (reference rule)."""
    text = text.replace(",", "")
    if GSM8K_MARKER in text:
        found = _NUMBER.findall(text.split(GSM8K_MARKER, 1)[1])
        if found:
            return float(found[0])
    found = _NUMBER.findall(text)
    return float(found[-1]) if found else None


#: Task name -> class, in the order of definition (register a new task with ``@register_task(name)``).
TASKS = Registry("task")


def register_task(name: str, order: float = float("inf")):
    """Class decorator adding a :class:`Task` subclass under ``name`` (the one registration style:
    every registry of clinic has its ``register_*`` decorator)."""

    def wrap(cls):
        cls.name = name
        return TASKS.register(name, cls, order=order)

    return wrap


class Task:
    """A benign task: training rows, test rows, sample conversion and scoring."""

    name: str = ""  # set by register_task
    scored: bool = True  # has an accuracy rule (is_correct): evaluations measure it
    train_source: str = ""
    test_source: str = ""
    max_new_tokens: int = 16

    def sample(self, row: dict) -> Sample:
        raise NotImplementedError

    def is_correct(self, output: str, row: dict, rule: str = "substring") -> bool:
        raise NotImplementedError

    def train_rows(self) -> list[dict]:
        return load_rows(self.train_source)

    def test_rows(self) -> list[dict]:
        return load_rows(self.test_source)


@register_task("sst2")
class SST2(Task):
    name, train_source, test_source, max_new_tokens = "sst2", "sst2", "sst2-validation", 8

    def sample(self, row):
        return Sample(SST2_INSTRUCTION, row["text"].strip(), SST2_LABELS[row["label"]])

    def is_correct(self, output, row, rule="substring"):
        label = SST2_LABELS[row["label"]]
        if rule == "exact":
            return output.strip().lower() == label
        return label in output or label.capitalize() in output


@register_task("agnews")
class AGNews(Task):
    name, train_source, test_source, max_new_tokens = "agnews", "agnews", "agnews-test", 8

    def sample(self, row):
        return Sample(AGNEWS_INSTRUCTION, row["text"].strip(), AGNEWS_LABELS[row["label"]])

    def is_correct(self, output, row, rule="substring"):
        label = AGNEWS_LABELS[row["label"]]
        variants = {label, label.lower()} | ({"sci"} if label == "Sci/Tech" else set())
        return any(v in output for v in variants)


@register_task("gsm8k")
class GSM8K(Task):
    name, train_source, test_source, max_new_tokens = "gsm8k", "gsm8k", "gsm8k-test", 256

    def __init__(self, question_suffix: str = GSM8K_SUFFIX_TVACCINE):
        self.question_suffix = question_suffix

    def sample(self, row):
        answer = row["answer"].replace("####", GSM8K_MARKER.rstrip(" "))
        return Sample(row["question"] + self.question_suffix, "", answer)

    def is_correct(self, output, row, rule="substring"):
        predicted, truth = extract_number(output), extract_number(row["answer"].replace("####", GSM8K_MARKER))
        return predicted is not None and truth is not None and abs(predicted - truth) < 1e-6


@register_task("alpaca")
class Alpaca(Task):
    """Open-ended instructions: usable as benign fine-tuning data; no accuracy rule."""

    name, train_source, test_source, max_new_tokens = "alpaca", "alpaca", "alpaca-eval", 128
    scored = False

    def sample(self, row):
        return Sample(row["prompt"], "", row["response"])

    def is_correct(self, output, row, rule="substring"):
        raise ClinicError("alpaca has no accuracy rule (AlpacaEval needs an external judge)")


def scored_tasks() -> tuple[str, ...]:
    """The tasks with an accuracy rule (their class says ``scored``)."""
    return tuple(name for name, cls in TASKS.items() if cls.scored)


def get_task(name: str) -> Task:
    return TASKS.get(name)()
