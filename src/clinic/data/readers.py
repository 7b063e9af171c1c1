"""Reading data files into canonical rows: the file formats clinic accepts (``.json``, ``.jsonl``,
``.csv``/``.tsv``, ``.parquet``), the canonical fields of each data *kind*, the column mapping of a
user file, and the two benchmark layouts read as they are published (HarmBench's CSV, SORRY-Bench's
JSONL). The named datasets that use these readers are in :mod:`clinic.data.sources`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import ClinicError

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
# a column mapping given on the command line


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
