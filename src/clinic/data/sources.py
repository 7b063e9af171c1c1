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

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import ClinicError
from ..registry import Registry
from ..settings import data_dir, offline
from ..values import nearest_hint

KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "qa": ("prompt", "response"),
    "labelled_qa": ("prompt", "response", "is_safe"),
    "classification": ("text", "label"),
    "gsm8k": ("question", "answer"),
    "instruction": ("prompt", "response"),
    "prompts": ("prompt",),
}


# --------------------------------------------------------------------------------------------
# reading files


def read_table(path: str | Path) -> list[dict]:
    """Rows of a .json / .jsonl / .csv / .tsv / .parquet file, with one-line errors.

    Whatever goes wrong while reading (a broken line, a binary file, a damaged Parquet footer, a
    folder named like a file, no permission) is a :class:`ClinicError` naming the file and, where
    the format has lines, the row. Text files may start with a UTF-8 byte-order mark (Excel
    writes one)."""
    path = Path(path)
    if not path.exists():
        raise ClinicError(f"data file {path} does not exist")
    if path.is_dir():
        raise ClinicError(f"data file {path} is a directory")
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".tsv": _read_csv,
               ".parquet": _read_parquet}
    if suffix not in readers:
        raise ClinicError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl, .csv, .tsv or .parquet)")
    try:
        rows = readers[suffix](path)
    except UnicodeDecodeError as exc:
        raise ClinicError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ClinicError(f"data file {path} cannot be read: {exc.strerror or exc}") from None
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ClinicError(f"{path} row {i}: expected an object with named fields, got {type(row).__name__}")
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ClinicError(f"{path} row {lineno}: not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise ClinicError(f"{path} row {lineno}: JSON nested too deeply") from None
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ClinicError(f"{path}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
    except RecursionError:
        raise ClinicError(f"{path}: JSON nested too deeply") from None
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]} style
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ClinicError(f"{path}: expected a list of records (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise ClinicError(f"{path}: expected a list of records")
    return data


def _read_csv(path: Path) -> list[dict]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as fh:  # -sig: a BOM is not part of the first column's name
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            rows = list(reader)
        except csv.Error as exc:
            raise ClinicError(f"{path} line {reader.line_num}: not valid {path.suffix[1:].upper()} ({exc})") from None
    for i, row in enumerate(rows, 1):
        if None in row:  # more cells than the header has columns
            raise ClinicError(f"{path} row {i}: {len(row[None])} more cell(s) than the header has columns")
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, TypeError, ImportError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ClinicError(f"{path}: not a readable Parquet file ({(str(exc).splitlines() or [''])[0]})") from None
    return frame.to_dict(orient="records")


def map_columns(rows: list[dict], kind: str, columns: dict[str, str] | None, origin: str) -> list[dict]:
    """Rename file columns to the canonical fields of ``kind`` and check they exist."""
    if kind not in KIND_FIELDS:
        raise ClinicError(f"unknown data kind {kind!r}; choose one of {', '.join(KIND_FIELDS)}")
    columns = dict(columns or {})
    unknown = set(columns) - set(KIND_FIELDS[kind]) - {"context", "input", "category"}
    if unknown:
        raise ClinicError(f"column mapping names unknown field(s) {sorted(unknown)} for {kind} data")
    if not rows:
        raise ClinicError(f"{origin}: the dataset is empty")
    out = []
    for i, row in enumerate(rows, 1):
        new = dict(row)
        for field_name in KIND_FIELDS[kind]:
            column = columns.get(field_name, field_name)
            if column not in row:
                raise ClinicError(
                    f"{origin} row {i}: missing column {column!r}"
                    + (f" (mapped to field {field_name!r})" if column != field_name else "")
                    + f"; columns present: {', '.join(map(str, row)) or 'none'}"
                )
            value = row[column]
            if value is None or (isinstance(value, str) and not value.strip() and field_name != "response"):
                raise ClinicError(f"{origin} row {i}: column {column!r} is empty")
            if field_name in _TEXT_FIELDS:
                value = _text(value, origin, i, column)
            new[field_name] = value
        for extra in ("context", "input", "category"):
            if extra in columns and columns[extra] in row:
                new[extra] = row[columns[extra]]
        if kind == "classification":
            try:
                new["label"] = int(new["label"])
            except (TypeError, ValueError):
                raise ClinicError(f"{origin} row {i}: label {new['label']!r} is not an integer") from None
        if kind == "labelled_qa":
            new["is_safe"] = _as_bool(new["is_safe"], origin, i)
        out.append(new)
    return out


_TEXT_FIELDS = {"prompt", "response", "text", "question", "answer"}


def _text(value, origin: str, row: int, column: str) -> str:
    """A text cell; a number (a JSON answer like 42) is its text, anything else an error."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ClinicError(f"{origin} row {row}: column {column!r} must be text, got {type(value).__name__}")


def _as_bool(value, origin: str, row: int) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("true", "1", "yes"):
        return True
    if str(value).strip().lower() in ("false", "0", "no"):
        return False
    raise ClinicError(f"{origin} row {row}: is_safe value {value!r} is not a boolean")


# --------------------------------------------------------------------------------------------
# benchmark readers (official formats)


def read_harmbench(path: str | Path) -> list[dict]:
    """HarmBench behaviours CSV (Behavior, FunctionalCategory, SemanticCategory, Tags,
    ContextString, BehaviorID). A contextual behaviour gets its ContextString placed before it."""
    rows = read_table(path)
    out = []
    for i, row in enumerate(rows, 1):
        if "Behavior" not in row:
            raise ClinicError(f"{path} row {i}: missing column 'Behavior' (not a HarmBench behaviours CSV)")
        behavior = (row.get("Behavior") or "").strip()
        context = (row.get("ContextString") or "").strip()
        prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
        out.append(
            {
                "prompt": prompt,
                "behavior_id": row.get("BehaviorID", ""),
                "category": row.get("SemanticCategory", ""),
                "functional_category": row.get("FunctionalCategory", ""),
            }
        )
    return out


def read_sorrybench(path: str | Path) -> list[dict]:
    """SORRY-Bench jsonl (question_id, category, turns = [prompt], prompt_style)."""
    rows = read_table(path)
    out = []
    for i, row in enumerate(rows, 1):
        turns = row.get("turns")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise ClinicError(f"{path} row {i}: column 'turns' must be a list holding the prompt")
        out.append(
            {
                "prompt": turns[0],
                "question_id": row.get("question_id"),
                "category": row.get("category"),
                "prompt_style": row.get("prompt_style", "base"),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Source:
    name: str
    kind: str
    description: str
    files: tuple[str, ...]  # candidates relative to the data directory; the first that exists
    hub: tuple[str, str | None, str] | None = None  # (id, config, split)
    reader: Callable[[Path], list[dict]] | None = None  # file -> canonical rows
    hub_mapper: Callable[[dict], dict] | None = None  # hub row -> canonical row

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
           lambda r: {"prompt": r["instruction"], "response": r["output"]}),
    Source("advbench", "prompts", "AdvBench harmful behaviours (520)", ("advbench/prompts.jsonl",),
           ("walledai/AdvBench", None, "train"), _prompts),
    Source("strongreject", "prompts", "StrongREJECT forbidden prompts (313)", ("strongreject/prompts.jsonl",),
           ("walledai/StrongREJECT", None, "train"), _prompts),
    Source("do-not-answer", "prompts", "Do-Not-Answer questions (939)", ("do_not_answer/prompts.jsonl",),
           ("LibrAI/do-not-answer", None, "train"), _prompts, lambda r: {"prompt": r["question"]}),
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


def parse_columns(spec: str | None) -> dict[str, str] | None:
    """``"prompt=question,response=answer"`` -> ``{"prompt": "question", "response": "answer"}``."""
    if not spec:
        return None
    mapping = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ClinicError(f"column mapping {part!r} must look like field=column")
        key, value = (s.strip() for s in part.split("=", 1))
        mapping[key] = value
    return mapping
