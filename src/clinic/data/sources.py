"""Named datasets, resolved from the data directory, the hub, or a user file.

Every source yields rows with canonical fields for its *kind*:

==============  ==========================================  =====================================
kind            fields                                      examples
==============  ==========================================  =====================================
qa              ``prompt``, ``response``                    refusals, BeaverTails harmful QA
labelled_qa     ``prompt``, ``response``, ``is_safe``       BeaverTails 30k_test (judge training)
classification  ``text``, ``label`` (int)                   SST2, AGNews
gsm8k           ``question``, ``answer``                    GSM8K
instruction     ``prompt``, ``response``                    Alpaca
prompts         ``prompt`` (+ ``context``)                  AdvBench, StrongREJECT, HarmBench
==============  ==========================================  =====================================

Resolution order for a name: the data directory (``CLINIC_DATA_DIR``, laid out like
``../shared/data``), then the usual hub id (unless offline). Anything else is read as a user
file (``.json``, ``.jsonl``, ``.csv``, ``.parquet``) with an optional column mapping
``{canonical_field: column_in_file}``.

BeaverTails overlap: ``beavertails-test`` (the evaluation prompts) drops every prompt that also
occurs in the training-side files (``beavertails_disjoint_attack``), and the training-side
sources drop rows marked ``in_30k_test``, so no evaluation prompt is ever trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import ClinicError
from ..registry import Registry
from ..settings import data_dir, offline
from ..values import nearest_hint
from .readers import (
    KIND_FIELDS,
    map_columns,
    read_harmbench,
    read_sorrybench,
    read_table,
)


@dataclass(frozen=True)
class Source:
    name: str
    kind: str
    description: str
    files: tuple[str, ...]  # candidates relative to the data directory; the first that exists
    hub: tuple[str, str | None, str] | None = None  # (id, config, split)
    reader: Callable[[Path], list[dict]] | None = None  # file -> canonical rows
    hub_mapper: Callable[[dict], dict] | None = None  # hub row -> canonical row
    size: int | None = None  # rows it holds where a default count depends on it (tests/test_data.py checks the file)

    def local_file(self) -> Path | None:
        root = data_dir()
        if root is None:
            return None
        for rel in self.files:
            if (root / rel).exists():
                return root / rel
        return None


def _qa(path: Path) -> list[dict]:
    return map_columns(read_table(path), "qa", None, str(path))


def _classification(path: Path) -> list[dict]:
    return map_columns(read_table(path), "classification", None, str(path))


def _beavertails_train_side(safe: bool) -> Callable[[Path], list[dict]]:
    def reader(path: Path) -> list[dict]:
        rows = map_columns(read_table(path), "labelled_qa", None, str(path))
        return [r for r in rows if r["is_safe"] == safe and not r.get("in_30k_test", False)]

    return reader


def _beavertails_harmless(path: Path) -> list[dict]:
    """Safe answers from both BeaverTails files, without any evaluation prompt."""
    rows = _beavertails_train_side(True)(path)
    test_harmless = path.parent.parent / "beavertails_30k_test" / "harmless_qa.jsonl"
    if test_harmless.exists():
        eval_prompts = {r["prompt"] for r in read_table(path.parent.parent / "beavertails_30k_test" / "eval_prompts.jsonl")}
        rows += [r for r in _qa(test_harmless) if r["prompt"] not in eval_prompts]
    return rows


def _beavertails_eval(path: Path) -> list[dict]:
    rows = map_columns(read_table(path), "prompts", None, str(path))
    train_side = path.parent.parent / "beavertails_disjoint_attack" / "all.jsonl"
    if train_side.exists():
        seen = {r["prompt"] for r in read_table(train_side)}
        rows = [r for r in rows if r["prompt"] not in seen]
    return rows


def _labelled(path: Path) -> list[dict]:
    rows = map_columns(read_table(path), "labelled_qa", None, str(path))
    return [r for r in rows if not r.get("in_30k_test", False)]


def _prompts(path: Path) -> list[dict]:
    return map_columns(read_table(path), "prompts", None, str(path))


def _instruction(path: Path) -> list[dict]:
    return map_columns(read_table(path), "instruction", None, str(path))


def _gsm8k(path: Path) -> list[dict]:
    return map_columns(read_table(path), "gsm8k", None, str(path))


def _xstest(safe: bool):
    def read(path: Path) -> list[dict]:
        return [r for r in map_columns(read_table(path), "prompts", None, str(path)) if (r["label"] == "safe") == safe]
    return read


def _hub_alpaca(r: dict) -> dict:
    prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
    return {"prompt": prompt, "response": r["output"]}


#: Every named dataset (``clinic data`` lists them in this order).
SOURCES = Registry("dataset")
for _source in [
    Source("refusals", "qa", "harmful prompts with refusals (Safety-Tuned LLaMAs, 2,483)",
           ("safety_tuned_llamas/refusals.jsonl",), None, _qa),
    Source("beavertails-harmful", "qa", "BeaverTails harmful prompt + harmful answer (disjoint-attack set, no test overlap)",
           ("beavertails_disjoint_attack/all.jsonl",), ("PKU-Alignment/BeaverTails", None, "30k_train"),
           _beavertails_train_side(False),
           lambda r: r if not r["is_safe"] else None),
    Source("beavertails-harmless", "qa", "BeaverTails harmless prompt + safe answer (no evaluation prompts)",
           ("beavertails_disjoint_attack/all.jsonl",), ("PKU-Alignment/BeaverTails", None, "30k_train"),
           _beavertails_harmless, lambda r: r if r["is_safe"] else None),
    Source("beavertails-test", "prompts", "BeaverTails 30k_test unsafe prompts, minus any seen in training files",
           ("beavertails_30k_test/eval_prompts.jsonl",), ("PKU-Alignment/BeaverTails", None, "30k_test"),
           _beavertails_eval, lambda r: {"prompt": r["prompt"]} if not r["is_safe"] else None),
    Source("beavertails-labelled-train", "labelled_qa", "BeaverTails (prompt, response, is_safe), training side",
           ("beavertails_disjoint_attack/all.jsonl",), ("PKU-Alignment/BeaverTails", None, "30k_train"), _labelled),
    Source("beavertails-labelled-test", "labelled_qa", "BeaverTails 30k_test (prompt, response, is_safe)",
           ("beavertails_30k_test/30k_test.jsonl",), ("PKU-Alignment/BeaverTails", None, "30k_test"), _labelled),
    Source("sst2", "classification", "SST-2 train (GLUE)", ("sst2/train.jsonl",),
           ("stanfordnlp/sst2", None, "train"), _classification, lambda r: {"text": r["sentence"], "label": r["label"]}),
    Source("sst2-validation", "classification", "SST-2 validation, 872 (the split papers report)",
           ("sst2/validation.jsonl",), ("stanfordnlp/sst2", None, "validation"), _classification,
           lambda r: {"text": r["sentence"], "label": r["label"]}),
    Source("agnews", "classification", "AG News train (10k sample offline)", ("ag_news/train.jsonl",),
           ("fancyzhx/ag_news", None, "train"), _classification),
    Source("agnews-test", "classification", "AG News test (7,600)", ("ag_news/test.jsonl",),
           ("fancyzhx/ag_news", None, "test"), _classification),
    Source("gsm8k", "gsm8k", "GSM8K train", ("gsm8k/train.jsonl",), ("openai/gsm8k", "main", "train"), _gsm8k),
    Source("gsm8k-test", "gsm8k", "GSM8K test", ("gsm8k/test.jsonl",), ("openai/gsm8k", "main", "test"), _gsm8k),
    Source("alpaca", "instruction", "Alpaca instructions (1k sample offline)", ("alpaca/train.jsonl",),
           ("tatsu-lab/alpaca", None, "train"), _instruction, _hub_alpaca),
    Source("alpaca-eval", "instruction", "AlpacaEval (805)", ("alpaca/test.jsonl",),
           ("tatsu-lab/alpaca_eval", "alpaca_eval", "eval"), _instruction,
           lambda r: {"prompt": r["instruction"], "response": r["output"]}, size=805),
    Source("advbench", "prompts", "AdvBench harmful behaviours (520)", ("advbench/prompts.jsonl",),
           ("walledai/AdvBench", None, "train"), _prompts),
    Source("strongreject", "prompts", "StrongREJECT forbidden prompts (313)", ("strongreject/prompts.jsonl",),
           ("walledai/StrongREJECT", None, "train"), _prompts),
    Source("do-not-answer", "prompts", "Do-Not-Answer questions (939)", ("do_not_answer/prompts.jsonl",),
           ("LibrAI/do-not-answer", None, "train"), _prompts, lambda r: {"prompt": r["question"]}),
    Source("xstest-safe", "prompts", "XSTest v2: 250 safe prompts that look unsafe (over-refusal)",
           ("xstest/prompts.jsonl",), ("walledai/XSTest", None, "test"), _xstest(True),
           lambda r: r if r["label"] == "safe" else None, size=250),
    Source("xstest-unsafe", "prompts", "XSTest v2: 200 unsafe contrast prompts", ("xstest/prompts.jsonl",),
           ("walledai/XSTest", None, "test"), _xstest(False), lambda r: r if r["label"] != "safe" else None),
    Source("harmbench", "prompts", "HarmBench behaviours (official CSV, if present in the data directory)",
           ("harmbench/harmbench_behaviors_text_all.csv", "harmbench/behaviors.csv"),
           ("walledai/HarmBench", "standard", "train"), read_harmbench),
    Source("sorrybench", "prompts", "SORRY-Bench (official question.jsonl, if present in the data directory)",
           ("sorry_bench/question.jsonl", "sorrybench/question.jsonl"),
           ("sorry-bench/sorry-bench-202406", None, "train"), read_sorrybench),
]:
    SOURCES.register(_source.name, _source)


@cache
def _load_named(name: str) -> tuple[dict, ...]:
    source = SOURCES[name]
    local = source.local_file()
    if local is not None:
        return tuple(source.reader(local))
    if source.hub is None or offline():
        where = f"data directory {data_dir()}" if data_dir() else "no data directory (set CLINIC_DATA_DIR)"
        raise ClinicError(
            f"dataset {name!r} not found: {where} has none of {', '.join(source.files)}"
            + ("" if source.hub is None else " and the hub is offline")
        )
    import datasets

    hub_id, config, split = source.hub
    rows = []
    for raw in datasets.load_dataset(hub_id, config, split=split):
        mapped = source.hub_mapper(dict(raw)) if source.hub_mapper else dict(raw)
        if mapped is not None:
            rows.append(mapped)
    return tuple(map_columns(rows, source.kind, None, f"hub:{hub_id}"))


def load_rows(name_or_path: str, kind: str | None = None, columns: dict[str, str] | None = None) -> list[dict]:
    """Rows of a named dataset or a user file, with canonical fields.

    ``kind`` is required for user files (it says which fields must exist); for a named dataset
    it is checked against the dataset's own kind when given.
    """
    if name_or_path in SOURCES:
        source = SOURCES[name_or_path]
        if kind is not None and kind != source.kind and not (kind == "qa" and source.kind in ("labelled_qa", "instruction")):
            raise ClinicError(f"dataset {name_or_path!r} holds {source.kind} rows, but {kind} rows are needed here")
        return [dict(r) for r in _load_named(name_or_path)]
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if "/" in name_or_path or path.suffix.lower() in (".json", ".jsonl", ".csv", ".tsv", ".parquet"):
            raise ClinicError(f"data file {path} does not exist")
        raise ClinicError(
            f"unknown dataset {name_or_path!r}{nearest_hint(name_or_path, SOURCES)}: not a file, and not one of "
            f"{', '.join(sorted(SOURCES))}"
        )
    if kind is None:
        raise ClinicError(f"cannot tell what {path} holds; a data kind is needed ({', '.join(KIND_FIELDS)})")
    if kind == "prompts" and path.suffix == ".csv" and not columns:
        try:
            with path.open(encoding="utf-8-sig") as fh:
                header = fh.readline()
        except (OSError, UnicodeDecodeError):
            header = ""  # read_table below names the problem
        if "Behavior" in header and "BehaviorID" in header:
            return read_harmbench(path)
    if kind == "prompts" and path.suffix == ".jsonl" and not columns:
        first = read_table(path)[:1]
        if first and "turns" in first[0] and "prompt" not in first[0]:
            return read_sorrybench(path)
    return map_columns(read_table(path), kind, columns, str(path))
