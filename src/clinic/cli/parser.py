"""The argument parser every ``clinic`` command uses: clinic's error conventions on argparse.

- every error is one line, ``clinic: error: ...``, exit code 2 (argparse prints its usage first);
- an unknown option or an invalid choice names the nearest valid one (did you mean ...?);
- a renamed option keeps its old spelling as a deprecated alias that still works and prints one
  warning line (users' scripts use the old names).

This module imports only the standard library: ``clinic --help`` and the light commands use it
as it is; :mod:`clinic.cli.options` adds the dataclass fields on top (transformers'
``HfArgumentParser``).
"""

from __future__ import annotations

import argparse
import difflib
import sys


def nearest(word: str, candidates) -> str:
    """`` (did you mean 'x'?)`` for the candidate closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class ArgParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with clinic's one-line errors, did-you-mean and deprecated aliases."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)  # keeps the listings' lines
        super().__init__(*args, **kwargs)
        self.renamed: dict[str, str] = {}  # old option spelling -> the current one
        self.checks: list = []  # namespace -> message or None: options that only make sense together

    def deprecate(self, renamed: dict[str, str]) -> None:
        """Accept each old option spelling (key) for the current one (value), with one warning line when used."""
        self.renamed.update(renamed)

    def add_output(self, what: str = "run directory", default: str | None = None) -> None:
        """``--output`` (the directory a command writes; required unless it has a ``default``) and ``--overwrite``."""
        self.add_argument("--output", required=default is None,
                          help=f"{what} to create" + (f" (default {default})" if default else ""))
        self.add_argument("--overwrite", action="store_true", help=f"replace an existing {what}")

    def error(self, message: str):  # one line, exit 2 (argparse would print the usage first)
        if message.startswith("unrecognized arguments: "):
            unknown = message.removeprefix("unrecognized arguments: ").split()[0].split("=")[0]
            if unknown.startswith("--"):  # compared without the dashes, which every option shares
                options = {o[2:]: o for o in self._option_string_actions if o.startswith("--")}
                close = difflib.get_close_matches(unknown[2:], list(options), n=1)
                message += f" (did you mean {options[close[0]]!r}?)" if close else ""
        self.exit(2, f"clinic: error: {message}\n")

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            what = "command" if isinstance(action, argparse._SubParsersAction) else action.dest.replace("_", " ")
            choices = [str(c) for c in action.choices]
            # named by its first spelling (argparse would join --prompt-style/--prompt_style)
            name = f"argument {action.option_strings[0]}: " if action.option_strings else ""
            raise argparse.ArgumentError(None, f"{name}unknown {what} {value!r}{nearest(value, choices)}; "
                                               f"choose one of {', '.join(choices)}")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        renamed = self.renamed
        for i, arg in enumerate(args):
            if arg == "--":
                break
            old, sep, value = arg.partition("=")
            if old in renamed:
                import logging

                logging.getLogger("clinic").warning(f"{old} is deprecated, use {renamed[old]}")
                args[i] = renamed[old] + sep + value
        namespace, extras = super().parse_known_args(args, namespace)
        for check in self.checks:  # before any work starts, so a bad combination costs nothing
            message = check(namespace)
            if message:
                self.error(message)
        return namespace, extras

    def format_help(self) -> str:
        text = super().format_help()
        if self.renamed:
            pairs = ", ".join(f"{old} -> {new}" for old, new in self.renamed.items())
            text += f"\ndeprecated spellings (still accepted): {pairs}\n"
        return text
