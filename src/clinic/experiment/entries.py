"""The values an experiment file names: method entries with their options and labels, names that
become folder names, lists and whole numbers, each checked with a one-line error."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ClinicError
from ..values import coerce

# Names that become folder names (the experiment directory, method labels in stage directories).
_SAFE_NAME = re.compile(r"^[^/\\\x00-\x1f.][^/\\\x00-\x1f]{0,99}$")


def check_name(value, where: str) -> str:
    """``value`` when it can be a folder name as it is (no ``/`` or ``\\``, no leading dot, no control
    characters)."""
    text = str(value)
    if not _SAFE_NAME.match(text):
        raise ClinicError(f"{where} {text!r} cannot name a folder: no '/' or '\\', no leading '.', "
                          f"at most 100 characters")
    return text


def integer(value, where: str) -> int:
    return coerce(value, int, where)


@dataclass(frozen=True)
class MethodEntry:
    """A method with its options; ``label`` names it in directories and tables."""

    name: str
    options: tuple = ()  # sorted (key, value) pairs, hashable
    label: str = ""
    train: tuple = ()  # this entry's training overrides over the block's ``train:`` (sorted pairs)

    @classmethod
    def parse(cls, entry, where: str) -> MethodEntry:
        if isinstance(entry, str):
            return cls(entry, (), check_name(entry, f"{where}: method"))
        if isinstance(entry, dict) and "name" in entry:
            options = {k: v for k, v in entry.items() if k not in ("name", "label", "train")}
            if any(isinstance(v, (dict, list)) for v in options.values()):
                raise ClinicError(f"{where}: options of method {entry['name']!r} must be single values")
            train = entry.get("train") or {}
            if not isinstance(train, dict) or any(isinstance(v, (dict, list)) for v in train.values()):
                raise ClinicError(f"{where}: train of method {entry['name']!r} must map training settings to single "
                                  f"values, got {train!r}")
            label = check_name(entry.get("label", entry["name"]), f"{where}: label")
            return cls(str(entry["name"]), tuple(sorted(options.items())), label, tuple(sorted(train.items())))
        raise ClinicError(f"{where}: a method is a name or a mapping with 'name' (and options), got {entry!r}")


def as_list(value, where: str) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int, float)):
        return [value]
    raise ClinicError(f"{where} must be a list, got {value!r}")

