"""Command-line options from settings dataclasses, with transformers' ``HfArgumentParser``.

One name per setting: a dataclass field ``harmful_sets`` is the option ``--harmful-sets`` (and
``--harmful_sets``, HfArgumentParser's spelling), the experiment-file key ``harmful_sets`` and the
Python field. Help text and allowed values come from the field's metadata (``help``,
``choices``). Deviations from HfArgumentParser's defaults, and why:

- the dataclass's fields are copied before HfArgumentParser sets their resolved types (it writes
  ``field.type`` in place, which would change the classes for everyone else);
- a ``list[str]`` field takes one comma-separated value (``--judges keyword,harm-ce``; ``''`` for
  none), as clinic always has, instead of space-separated values;
- a ``dict`` field (a column mapping) is given as text and parsed by the command;
- ``unset=True`` makes every option default to ``None`` ("not given"): a preset's value then
  stands unless the user gives the option (``--preset``); the help shows the class's default;
- every bool has ``--no-NAME`` too (HfArgumentParser adds it only when the default is true).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import types
import typing

from transformers import HfArgumentParser

from .parser import ArgParser

ARGPARSE_KEYS = {"help", "choices", "metavar", "nargs", "required"}  # not "aliases": clinic's are old keys


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; ``""`` -> ``[]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _shown(value) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


class ConfigParser(ArgParser, HfArgumentParser):
    """An :class:`~clinic.cli.parser.ArgParser` that adds options from dataclass fields."""

    def add_dataclass(self, cls, title: str | None = None, *, only=None, unset: bool = False,
                      helps: dict[str, str] | None = None) -> None:
        """One option per field of ``cls`` (``only``: these, in this order) in the argument group
        ``title``; ``helps`` replaces a field's help."""
        hints = typing.get_type_hints(cls)
        by_name = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
        target = self.add_argument_group(title) if title else self
        for name in only or by_name:
            self.add_field(target, by_name[name], hints[name], unset=unset, help_text=(helps or {}).get(name))

    def add_field(self, target, f: dataclasses.Field, kind, *, unset: bool = False, help_text: str | None = None,
                  show_default: bool = True) -> None:
        """The option of one field (``kind``: its resolved type) in ``target`` (this parser or a group)."""
        f = copy.copy(f)
        f.type = kind
        base = kind
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            base = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(base) is list:
            f.type = comma_list  # one comma-separated value (see the module docstring)
            help_text = f"{help_text or f.metadata.get('help', '')}, comma-separated"
        elif typing.get_origin(base) is dict or base is dict:
            f.type = str | None
        help_text = help_text or f.metadata.get("help", "")
        if show_default and _default(f) is not None:
            help_text += f" (default: {_shown(_default(f))})"
        # HfArgumentParser hands the metadata to add_argument: keep what argparse takes (clinic's
        # own keys, e.g. a LoRA field's "peft" name or a "range", are for clinic.values)
        f.metadata = {**{k: v for k, v in f.metadata.items() if k in ARGPARSE_KEYS}, "help": help_text}
        if unset or f.default_factory is not dataclasses.MISSING:
            # None = not given; a list default is filled in by the dataclass itself
            f.default, f.default_factory = None, dataclasses.MISSING
        self._parse_dataclass_field(target, f)
        self._actions[-1].option_strings.sort(key=lambda o: "_" in o)  # --max-steps first (usage shows the first)
        negation = f"--no-{f.name.replace('_', '-')}"
        if base is bool and negation not in self._option_string_actions:
            target.add_argument(negation, dest=f.name, action="store_false", default=f.default,
                                help=f"turn --{f.name.replace('_', '-')} off")

    def add_method_options(self, stage: str, specs: dict | None = None) -> list[str]:
        """Options of every method of ``stage`` (or of ``specs``: name -> spec with a ``config``
        dataclass); a name shared by several methods is one option, its help naming each method's
        meaning and default. Returns the option names."""
        from ..methods.registry import methods_for

        owners: dict[str, list] = {}
        for method, spec in (specs if specs is not None else methods_for(stage)).items():
            hints = typing.get_type_hints(spec.config)
            for f in dataclasses.fields(spec.config):
                if f.init and not f.name.startswith("_"):
                    owners.setdefault(f.name, []).append((method, f, hints[f.name]))
        group = self.add_argument_group("method options (each applies to the methods named in its help)")
        for name, uses in owners.items():
            _, f, kind = uses[0]
            text = "; ".join(f"{method}: {g.metadata.get('help', '')} (default {_shown(_default(g))})"
                             for method, g, _ in uses)
            self.add_field(group, f, kind, unset=True, help_text=text, show_default=False)
        return list(owners)


def values(args: argparse.Namespace, names) -> dict:
    """The parsed values of ``names`` that were given (not ``None``)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def add_execution(parser, dtype: bool = True, generation: bool = False, training: bool = False) -> None:
    """The execution options (where and how a stage computes; never part of its hash): the
    fields of :class:`clinic.experiment.blocks.ExecutionConfig`, the experiment file's
    ``execution`` keys: ``--device``, the loading ``--dtype`` and, for generation,
    ``--generation-batch`` and the vLLM options."""
    from ..experiment.blocks import ExecutionConfig

    names = ["device", *(["dtype"] if dtype else []), *(["report_to"] if training else []),
             *(["generation_batch", "vllm_mode", "tensor_parallel", "enforce_eager"] if generation else [])]
    parser.add_dataclass(ExecutionConfig, "execution (never part of a stage's hash)", only=names, unset=True)


def execution(args) -> dict:
    """The execution options a command was given, for :func:`clinic.stages.execute`."""
    keys = ("device", "dtype", "generation_batch", "vllm_mode", "tensor_parallel", "enforce_eager", "report_to")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
