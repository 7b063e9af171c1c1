"""The rows of ``clinic report``: one per model with its seeds pooled, each compared with its SFT
baseline on the same prompts.

1. :func:`collect_evaluations`: one record per finished evaluation (one model, one seed): counts
   per score column (HS per judge and prompt set, FA per task), the per-prompt outcomes from
   ``generations.jsonl``, sink heads and costs.
2. :func:`aggregate`: records that differ only by seed become one row: the mean score, its min-max
   over seeds, and the Wilson interval of all seeds' prompts pooled.
3. :func:`compare`: each row against its baseline (:func:`baseline_key`): the difference of the
   scores with Newcombe's paired interval and the exact McNemar p-value, over the same prompts of
   the same seeds; "n/a: ..." when the two runs did not judge the same prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation import coherence
from ..evaluation.coherence import is_incoherent
from ..evaluation.stats import paired_difference, wilson_interval
from ..rundir import jsonl_file, read_jsonl

GROUP_FIELDS = ["stage", "align", "finetune", "task", "p", "attack", "fixed attack"]  # a model; seeds are pooled
ATTACK_FIELDS = ("attack", "fixed attack")  # labels of attack-space runs only (clinic.experiment.attacks); absent elsewhere
# a repaired model's key has one more field, the repair method (other keys stay as they were)
REPAIR_FIELD = "repair"
BASELINE = "sft"  # the label of the undefended method, in align and in finetune
KEEP_LABELS = ("none", BASELINE)  # not a defence: kept as it is in the baseline's labels


def hs_column(judge: str, prompt_set: str) -> str:
    return f"HS {judge} [{prompt_set}]"


def incoherent_column(prompt_set: str) -> str:
    return f"incoherent [{prompt_set}]"


GUARD_PREFIXES = ("answers [", "over-refusal [", "NLL [")  # the free-text guard's columns (issue 35)


def is_guard_column(column: str) -> bool:
    return column.startswith(GUARD_PREFIXES)


def delta_column(column: str) -> str:
    return f"Δ{column} vs {BASELINE.upper()}"


def incoherent_share(row: dict) -> float | None:
    """The highest incoherent share (percent) of an aggregated row over its prompt sets; None
    when its answers were not kept (no generations)."""
    values = [v for k, v in row.items() if k.startswith("incoherent [") and k.count(" ") == 1 and v is not None]
    return max(values) if values else None


def broken(row: dict) -> str | None:
    """Why a row's model is broken (an incoherent share at or above BROKEN_SHARE on some prompt
    set), or None: such a model cannot win or lose a comparison (issue 35)."""
    for column, value in row.items():
        if column.startswith("incoherent [") and column.count(" ") == 1 and value is not None and value >= coherence.BROKEN_SHARE:
            return f"{value:.1f} % incoherent{column[len('incoherent'):]}"
    return None


def answer_incoherent(record: dict) -> bool:
    """Whether a judged answer is incoherent by today's rule, and so never harmful (an answer that
    was not kept counts as it was judged)."""
    return "response" in record and is_incoherent(record["response"])


def outcomes(eval_dir: Path) -> dict:
    """``{score column: (prompts, outcomes)}`` of one evaluation, in the order they were judged.

    The answers are read again with today's incoherence rule (:mod:`clinic.evaluation.coherence`):
    an incoherent answer is not harmful, whatever the judge said when it ran (committed results
    judged before the rule existed are re-scored this way), and its share is a column of its own."""
    path = jsonl_file(eval_dir, "generations.jsonl")
    items: dict = {}
    if path is None:
        return items
    for record in read_jsonl(path):
        if "flagged" in record:
            incoherent = answer_incoherent(record)
            outcomes = {hs_column(judge, record["set"]): flag and not incoherent for judge, flag in record["flagged"].items()}
            if "response" in record:
                outcomes[incoherent_column(record["set"])] = incoherent
        elif "correct" in record:
            outcomes = {f"FA {record['set']}": record["correct"]}
        elif "answer" in record:  # the free-text guard's benign instructions
            outcomes = {f"answers [{record['set']}]": record["answer"],
                        incoherent_column(record["set"]): record["incoherent"]}
        elif "refusal" in record:  # its safe prompts that look unsafe
            outcomes = {f"over-refusal [{record['set']}]": record["refusal"]}
        else:
            continue
        for column, value in outcomes.items():
            prompts, flags = items.setdefault(column, ([], []))
            prompts.append(record["prompt"])
            flags.append(bool(value))
    return items


def _without_seeds(value):
    if isinstance(value, dict):
        return {k: _without_seeds(v) for k, v in value.items() if k != "seed"}
    if isinstance(value, list):
        return [_without_seeds(v) for v in value]
    return value


def _settings(stage: dict, by_hash: dict) -> str:
    """A digest of everything behind an evaluation but its seed (its config and its ancestors'):
    two evaluations are seeds of one model exactly when their labels and settings agree (two
    fine-tuning blocks with the same labels but another n are two models, not two seeds)."""
    import hashlib

    chain = []
    while stage is not None:
        chain.append([stage["kind"], _without_seeds(stage["config"])])
        stage = by_hash.get(stage["parent"]) if stage["parent"] else None
    return hashlib.sha256(json.dumps(chain, sort_keys=True, default=str).encode()).hexdigest()[:8]


def collect_evaluations(root) -> tuple[list[dict], dict]:
    """One record per finished evaluation of an experiment directory, plus the plan."""
    from ..rundir import load_plan, read_json
    from ..stages import get_stage_kind

    plan, store = load_plan(root)
    by_hash = {s["hash"]: s for s in plan["stages"]}
    kinds = {s["kind"]: get_stage_kind(s["kind"]) for s in plan["stages"]}
    sinks = {s["parent"]: s for s in plan["stages"] if kinds[s["kind"]].role == "analysis"}

    def stage_metrics(stage) -> dict | None:
        path = Path(store) / stage["dir"]
        if not (path / "DONE").exists():
            return None
        metrics_file = path / kinds[stage["kind"]].metrics_file
        return read_json(metrics_file) if metrics_file.exists() else None

    records = []
    for stage in plan["stages"]:
        metrics = stage_metrics(stage) if kinds[stage["kind"]].role == "measurement" else None
        if metrics is None:
            continue
        labels = stage["labels"]
        key = tuple(labels.get(k) for k in GROUP_FIELDS) + ((labels[REPAIR_FIELD],) if REPAIR_FIELD in labels else ())
        record = {"key": key, "settings": _settings(stage, by_hash),
                  "seed": labels.get("seed"), "counts": {},
                  "other": {}, "items": outcomes(Path(store) / stage["dir"]), "eval dir": stage["dir"]}
        for set_name, judges in metrics.get("harmful", {}).items():
            for judge, m in judges.items():  # round: old metrics.json files hold only the percentage
                record["counts"][hs_column(judge, set_name)] = (round(m["harmful_score"] * m["n"] / 100), m["n"])
            record["other"][f"empty [{set_name}]"] = next(iter(judges.values()))["empty_share"] if judges else None
        for task, m in metrics.get("tasks", {}).items():
            record["counts"][f"FA {task}"] = (round(m["accuracy"] * m["n"] / 100), m["n"])
        for set_name, m in metrics.get("guard", {}).items():
            if "reference_nll" in m:
                record["other"][f"NLL [{set_name}]"] = m["reference_nll"]["nll"]
        for column, (_, flags) in record["items"].items():  # the answers, read again, over the metrics file
            record["counts"][column] = (sum(flags), len(flags))
        sink = sinks.get(stage["parent"])
        sink_metrics = stage_metrics(sink) if sink else None
        if sink_metrics:
            last = sink_metrics["entries"][-1]
            record["other"]["positive sink heads"] = last["positive_heads"]
            record["other"]["heads"] = last["total_heads"]
        parent = by_hash.get(stage["parent"]) if stage["parent"] else None
        peak = 0.0
        while parent is not None:
            pm = stage_metrics(parent) or {}
            if kinds[parent["kind"]].seconds is not None:  # a stage that made a model: its cost
                record["other"][f"{parent['kind']} seconds"] = pm.get(kinds[parent["kind"]].seconds)
                peak = max(peak, pm.get("peak_memory_mb") or 0.0)
            parent = by_hash.get(parent["parent"]) if parent["parent"] else None
        if peak:
            record["other"]["peak memory MB"] = peak
        records.append(record)
    return records, plan


def _groups(records: list[dict]) -> dict:
    """``{(labels, settings): [records of its seeds]}``, in plan order."""
    groups: dict = {}
    for record in records:
        groups.setdefault((record["key"], record["settings"]), []).append(record)
    return groups


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def aggregate(records: list[dict]) -> list[dict]:
    """One row per model (records equal but for the seed: same labels and settings), in plan order.

    A score column holds the mean over seeds, ``<column> n`` the prompts of all seeds,
    ``<column> ci95`` their pooled Wilson interval and, with several seeds,
    ``<column> seed range`` the lowest and highest seed's score. Other numbers are means."""
    groups = _groups(records)
    ambiguous = {key for key, _ in groups if sum(k == key for k, _ in groups) > 1}
    rows = []
    for (key, settings), members in groups.items():
        row = {k: v for k, v in zip(GROUP_FIELDS + [REPAIR_FIELD], key) if k not in ATTACK_FIELDS or v is not None}
        row["seeds"] = [m["seed"] for m in members]
        if key in ambiguous:  # the labels alone do not name the model: show which settings
            row["settings"] = settings
        for column in dict.fromkeys(c for m in members for c in m["counts"]):
            counts = [m["counts"][column] for m in members if column in m["counts"]]
            k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
            scores = [100.0 * c[0] / c[1] if c[1] else 0.0 for c in counts]
            row[column] = _mean(scores)
            row[f"{column} n"] = n
            row[f"{column} ci95"] = list(wilson_interval(k, n))
            if len(scores) > 1:
                row[f"{column} seed range"] = [min(scores), max(scores)]
        for column in dict.fromkeys(c for m in members for c in m["other"]):
            row[column] = _mean([m["other"].get(column) for m in members])
        row["eval dirs"] = [m["eval dir"] for m in members]
        rows.append(row)
    return rows


def baseline_key(key: tuple) -> tuple | None:
    """The model a row is compared with: the same stage, task, p and attack with every defence
    (an align or finetune label other than ``sft`` and ``none``) replaced by ``sft``.

    A defended fine-tune (sft -> lisa) is compared with the SFT fine-tune of the same aligned
    model (sft -> sft); an alignment defence (vaccine -> sft) with the SFT-aligned model under the
    same attack (sft -> sft); both at once (vaccine -> lisa) with sft -> sft; a repaired model
    with the unrepaired SFT fine-tune (the repair is a defence too). ``None`` for the base model
    and for rows that are their own baseline."""
    row = dict(zip(GROUP_FIELDS, key))
    if row["stage"] == "base":
        return None
    if row["stage"] == "repaired":
        row["stage"] = "finetuned"
    for field in ("align", "finetune"):
        if row[field] not in KEEP_LABELS:
            row[field] = BASELINE
    base = tuple(row.values())  # as long as the key (the attack labels may be left off)
    return None if base == tuple(key) else base


def paired_comparison(members: list[dict], baseline: list[dict], column: str) -> dict:
    """The paired comparison of one score column over the seeds of a row and its baseline."""
    by_seed = {m["seed"]: m for m in baseline}
    x, y = [], []
    for member in members:
        other = by_seed.get(member["seed"])
        if other is None:
            return {"n/a": f"baseline has no seed {member['seed']}"}
        mine, theirs = member["items"].get(column), other["items"].get(column)
        if mine is None or theirs is None:
            return {"n/a": "no per-prompt outcomes (generations.jsonl)"}
        if mine[0] != theirs[0]:
            return {"n/a": "prompts differ"}
        x += mine[1]
        y += theirs[1]
    if not x:
        return {"n/a": "no prompts"}
    return paired_difference(x, y).as_dict()


def compare(rows: list[dict], records: list[dict]) -> list[dict]:
    """Add ``Δ<column> vs SFT`` (the paired comparison) and ``baseline`` to every row of
    ``aggregate(records)`` that has a baseline."""
    groups = _groups(records)
    for row, ((key, _), members) in zip(rows, groups.items()):
        base = baseline_key(key)
        if base is None:
            continue
        row["baseline"] = " → ".join(str(v) for v in base[1:3]) + (" (not repaired)" if len(key) > len(GROUP_FIELDS) else "")
        candidates = [m for (k, _), m in groups.items() if k == base]
        base_row = next((r for r, ((k, _), _) in zip(rows, groups.items()) if k == base), None)
        why_broken = broken(row)
        why_base_broken = broken(base_row) if base_row is not None and len(candidates) == 1 else None
        for column in dict.fromkeys(c for m in members for c in m["counts"]
                                     if not c.startswith("incoherent [") and not is_guard_column(c)):
            if len(candidates) != 1:
                why = "baseline not evaluated" if not candidates else "several baselines share these labels"
                row[delta_column(column)] = {"n/a": why}
            elif why_broken or why_base_broken:  # a model that writes salad wins nothing, loses nothing
                row[delta_column(column)] = {"n/a": f"broken model, {why_broken}" if why_broken
                                             else f"broken baseline, {why_base_broken}"}
            else:
                row[delta_column(column)] = paired_comparison(members, candidates[0], column)
    return rows


def collect_results(root) -> tuple[list[dict], dict]:
    """The report's rows (one per model, seeds pooled, compared with the baseline) and the plan."""
    records, plan = collect_evaluations(root)
    return compare(aggregate(records), records), plan
