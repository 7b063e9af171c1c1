"""Typed user values and the one validator of every settings dataclass.

PyYAML reads ``1e-4`` as a string (YAML 1.1 wants ``1.0e-4``), ``seeds: [a]`` as text and
``judges: keyword`` as a string where a list belongs. :func:`parse_settings` is how every option
set and every experiment-file block becomes its dataclass: unknown keys are a one-line error with
the nearest name; :func:`check_fields` (which each settings dataclass calls in ``__post_init__``)
coerces every field to its declared type (numbers in the forms people write; NaN and infinities
refused) and enforces what the field's metadata declares: ``choices`` (also argparse's) and
``range`` (``(low, high)``, either end ``None``; ``open`` names an open end: ``"low"``, ``"high"``
or ``"both"``); ``label`` names a choice in its error (default: the field's name). Rules that involve several fields stay in each dataclass's ``__post_init__``.

:func:`hashed` is what a stage's hash covers of a settings dataclass: every field, except a field
added after results were published (``metadata["since"]``) while it holds its default, so adding
a setting never re-keys the stage store (tests/test_plan_pin.py); a field renamed for one name
per concept keeps its old name in the hash (``metadata["hash_name"]``) and as an accepted key
(``metadata["aliases"]``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache

from .errors import ClinicError

INT_MAX = 2**31 - 1  # torch, numpy and the tokenizers take C ints/longs; a seed must fit 32 bits


@cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def coerce_fields(obj, where: str) -> None:
    """Coerce every field of the dataclass ``obj`` to its declared type, in place."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name.startswith("_"):
            continue
        value = getattr(obj, f.name)
        setattr(obj, f.name, coerce(value, hints[f.name], f"{where}{f.name}"))


def check_fields(obj, where: str = "") -> None:
    """Coerce every field of the dataclass ``obj`` (in place), then check the ``choices`` and
    ``range`` its metadata declares; a one-line error names the first setting that fails."""
    coerce_fields(obj, where)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or f.name.startswith("_"):
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            label = f.metadata.get("label", f.name.replace("_", " "))
            raise ClinicError(f"unknown {label} {value!r}{nearest_hint(value, choices)}; choose one "
                              f"of {', '.join(map(str, choices))}")
        if "range" in f.metadata:
            low, high = f.metadata["range"]
            open_end = f.metadata.get("open", "")
            check_range(value, f"{where}{f.name}", low, high, low_open=open_end in ("low", "both"),
                        high_open=open_end in ("high", "both"))


def parse_settings(cls, values, where: str, extra=(), drop=(), item: str | None = None):
    """``cls(**values)`` for a settings dataclass, after refusing any key that is none of its
    fields (nor one of ``extra``, which the caller reads itself; ``drop``: fields that are not
    given here) with the nearest name, and typing each value as its field declares (``item``
    prefixes a value's name in errors; default ``where``); the dataclass's own ``__post_init__``
    checks the rest (:func:`check_fields`)."""
    if not isinstance(values, dict):
        raise ClinicError(f"{where} must be a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init} - set(drop)
    aliases = {old: f.name for f in dataclasses.fields(cls) for old in f.metadata.get("aliases", ())}
    values = {aliases.get(k, k): v for k, v in values.items()}  # a renamed setting's old name (and hash name)
    for key in values:
        if key not in names and key not in extra:
            allowed = sorted(names | set(extra))
            hint = nearest_hint(key, allowed) or f"; allowed: {', '.join(allowed)}"
            raise ClinicError(f"unknown key {key!r} in {where}{hint}")
    hints, prefix = _hints(cls), f"{where} " if item is None else item
    try:
        return cls(**{k: coerce(v, hints[k], f"{prefix}{k}") for k, v in values.items() if k in names})
    except TypeError as exc:  # a missing required field
        raise ClinicError(f"{where}: {exc}") from None


def hashed(obj) -> dict:
    """The fields of the settings dataclass ``obj`` that a stage's hash covers (see the module
    docstring): ``asdict`` less the late fields (``metadata["since"]``) at their default, and a
    renamed field under the name it was hashed by (``metadata["hash_name"]``)."""
    out = dataclasses.asdict(obj)
    for f in dataclasses.fields(obj):
        if "since" in f.metadata and out.get(f.name) == _field_default(f):
            out.pop(f.name)
        elif "hash_name" in f.metadata:
            out[f.metadata["hash_name"]] = out.pop(f.name)
    return out


def _field_default(f):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def coerce(value, kind, key: str):
    """``value`` as ``kind`` (int, float, bool, str, list[str], or one of them | None)."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ClinicError(f"{key} must be true or false, got {value!r}")
    if kind is int:
        return _integer(value, key)
    if kind is float:
        return _number(value, key)
    if kind is str:
        if isinstance(value, str):
            return value
        raise ClinicError(f"{key} must be text, got {value!r}")
    if typing.get_origin(kind) is list:
        if isinstance(value, str):  # `judges: keyword` means [keyword], not the letters of the word
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ClinicError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(kind) or (str,)
        return [coerce(v, item, f"{key} item") for v in value]
    return value


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ClinicError(f"{key} must be a number, got {value!r}")
    if isinstance(value, int):  # kept as it is: a stage's hash covers its settings as given (1, not 1.0)
        return value
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise ClinicError(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ClinicError(f"{key} must be a finite number, got {value!r}")
    return number


def _integer(value, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        real = _number(value, key) if not isinstance(value, bool) else math.nan
        if not float(real).is_integer():
            raise ClinicError(f"{key} must be a whole number, got {value!r}")
        number = int(real)
    if abs(number) > INT_MAX:
        raise ClinicError(f"{key} is out of range, got {value!r} (at most {INT_MAX})")
    return number


def check_range(value, key: str, low=None, high=None, low_open: bool = False, high_open: bool = False) -> None:
    """A one-line error unless ``low <= value <= high`` (``<`` at an open end)."""
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left = "" if low is None else ("(" if low_open else "[") + _shown(low)
        right = "" if high is None else _shown(high) + (")" if high_open else "]")
        span = f"within {left}, {right}" if low is not None and high is not None else (
            f"{'above' if low_open else 'at least'} {_shown(low)}" if low is not None else
            f"{'below' if high_open else 'at most'} {_shown(high)}")
        raise ClinicError(f"{key} must be {span}, got {value!r}")


def _shown(bound) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def nearest_hint(name, choices) -> str:
    """`` (did you mean 'x'?)`` for the choice nearest to a mistyped ``name``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
