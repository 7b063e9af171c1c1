"""Typed user values: what an experiment file or the CLI gives, as the type a setting declares.

PyYAML reads ``1e-4`` as a string (YAML 1.1 wants ``1.0e-4``), ``seeds: [a]`` as text and
``judges: keyword`` as a string where a list belongs. Every settings dataclass passes its fields
through :func:`coerce_fields` in ``__post_init__``: numbers in the forms people write become
numbers, anything that cannot be one is a one-line error naming the setting, and NaN or infinite
values are refused (no library downstream means anything by them). Range checks stay with each
dataclass (they are its own rules).
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
