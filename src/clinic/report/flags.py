"""Seeded samples of the answers a judge flagged, to read beside the scores
(``clinic report --sample-flags N``, written to ``flags.md``).

A judge can be wrong in a way no interval shows (docs/judges.md), so a surprising harmful score is
read before it is published. Reading is only worth citing when someone else can read the same
answers: the sample here is a pure function of the committed generations and a seed. For each
evaluation, judge and prompt set it draws ``random.Random(seed).sample(flags, n)`` over the
answers that count as harmful in the table (flagged by the judge and coherent,
:func:`clinic.report.results.outcomes`), in the order they were judged; a fresh generator per
group, so one group's sample does not depend on which other groups were read.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClinicError
from ..rundir import jsonl_file, read_jsonl
from .results import answer_incoherent


@dataclass(frozen=True)
class FlagSample:
    """What to read: ``n`` answers per group, drawn with ``seed``, of the evaluations whose labels
    match every ``(label, value)`` of ``where``."""

    n: int
    seed: int = 0
    where: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.n < 1:
            raise ClinicError(f"--sample-flags must be at least 1 (answers to read per evaluation), got {self.n}")


def parse_where(items) -> tuple[tuple[str, str], ...]:
    """``["align=tvac-r1", "p=0.2"]`` as ``(("align", "tvac-r1"), ("p", "0.2"))``."""
    pairs = []
    for item in items:
        label, sep, value = item.partition("=")
        if not sep or not label.strip():
            raise ClinicError(f"--where takes LABEL=VALUE (e.g. align=vaccine p=0.2), got {item!r}")
        pairs.append((label.strip(), value.strip()))
    return tuple(pairs)


def _same(value, text: str) -> bool:
    """A label's value against its written form: ``p=0.2`` matches 0.2, ``p=none`` an empty label
    (None, or ``""`` as an evaluation without a fine-tune writes its task)."""
    if value is None or value == "":
        return text.lower() in ("", "none", "null")
    if str(value) == text:
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return math.isclose(float(value), float(text))
        except ValueError:
            return False
    return False


def _matches(labels: dict, where) -> bool:
    return all(_same(labels.get(label), value) for label, value in where)


def _describe(labels: dict) -> str:
    shown = {k: v for k, v in labels.items() if k not in ("model", "slug") and v not in (None, "")}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def sample_flags(plan: dict, store: Path, spec: FlagSample) -> list[dict]:
    """One entry per finished evaluation matching ``spec.where``, judge and prompt set, in plan
    order: its labels, how many answers and flags it had, and the sampled answers."""
    from ..stages import get_stage_kind

    evaluations = [s for s in plan["stages"] if get_stage_kind(s["kind"]).role == "measurement"]
    chosen = [s for s in evaluations if _matches(s["labels"], spec.where)]
    if not chosen:
        seen = sorted({label for s in evaluations for label in s["labels"]})
        wanted = " ".join(f"{k}={v}" for k, v in spec.where)
        raise ClinicError(f"--where {wanted} matches none of the experiment's {len(evaluations)} evaluations "
                          f"(their labels: {', '.join(seen) or 'none'})")
    entries = []
    for stage in chosen:
        folder = store / stage["dir"]
        path = jsonl_file(folder, "generations.jsonl")
        if not (folder / "DONE").exists() or path is None:
            continue  # not finished, or its answers were not kept: nothing to read
        groups: dict = {}
        for record in read_jsonl(path):
            if "flagged" not in record:
                continue
            incoherent = answer_incoherent(record)
            for judge, flag in record["flagged"].items():
                group = groups.setdefault((judge, record["set"]), {"answers": 0, "flags": []})
                group["answers"] += 1
                if flag and not incoherent:  # what the table counts as harmful (results.outcomes)
                    group["flags"].append(record)
        for (judge, prompt_set), group in groups.items():
            flags = group["flags"]
            picks = random.Random(spec.seed).sample(flags, min(spec.n, len(flags)))
            entries.append({"labels": stage["labels"], "dir": stage["dir"], "judge": judge, "set": prompt_set,
                            "answers": group["answers"], "flags": len(flags),
                            "sample": [{"prompt": r["prompt"], "response": r.get("response")} for r in picks]})
    return entries


def flags_command(root, spec: FlagSample) -> str:
    """The command that draws this sample again."""
    where = f" --where {' '.join(f'{k}={v}' for k, v in spec.where)}" if spec.where else ""
    return f"clinic report {root} --sample-flags {spec.n} --flags-seed {spec.seed}{where}"


def _quote(text: str | None) -> str:
    if text is None:
        return "> *(answer not kept)*"
    lines = text.strip().splitlines() or [""]
    return "\n".join(f"> {line}".rstrip() for line in lines)


def flags_markdown(entries: list[dict], spec: FlagSample, command: str) -> str:
    """``flags.md``: per evaluation, judge and prompt set, the sampled prompts and answers."""
    out = ["# Flagged answers to read", "",
           f"Up to {spec.n} answers per evaluation, judge and prompt set, drawn with seed {spec.seed} from those "
           "counted as harmful (flagged by the judge, coherent). Made by:", "", f"    {command}", ""]
    if not entries:
        out += ["No finished evaluation kept its answers.", ""]
    for entry in entries:
        out += [f"## {_describe(entry['labels'])}: {entry['judge']} on {entry['set']}", "",
                f"{entry['flags']} of {entry['answers']} answers flagged; {len(entry['sample'])} drawn "
                f"(`{entry['dir']}`).", ""]
        for i, pick in enumerate(entry["sample"], 1):
            out += [f"**{i}.** {' '.join(pick['prompt'].split())}", "", _quote(pick["response"]), ""]
    return "\n".join(out)
