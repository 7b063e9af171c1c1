"""The ``clinic`` command: thin argument parsing over the stage functions.

One module per command (``clinic.cli.<module>``), each with ``parser(name)`` (its own parser,
built from the settings dataclasses) and ``run(args)``. :data:`COMMANDS` lists them; adding a
command is one module and one line there. Only the chosen command's module is imported, so
``clinic --help`` (which lists every command from :data:`COMMANDS`) imports neither torch nor
transformers.

Every user error (bad file, unknown name, value out of range, existing output) is printed as
one line, ``clinic: error: ...``, and the exit code is 2; nothing is written.
"""

from __future__ import annotations

import importlib
import os
import sys

from ..errors import ClinicError
from ..settings import COMPUTE_COMMANDS, apply_cpu_math, set_verbosity
from .parser import ArgParser

# command -> (module under clinic.cli, its line in `clinic --help`). The modules' parsers import
# torch, TRL and PEFT (the method registry, the stages); building every parser for `clinic --help`
# took 11.2 s on the 2-core CPU, listing them from this table takes 0.1 s.
COMMANDS: dict[str, tuple[str, str]] = {
    "align": ("train", "Safety-align a model"),
    "finetune": ("train", "Fine-tune a model on user data (the attack)"),
    "evaluate": ("evaluate", "Harmful score and fine-tune accuracy of a model"),
    "demo": ("demo", "Align, attack and measure the embedded SmolLM2 model (about 10 minutes on 2 cores)"),
    "methods": ("methods", "List the registered methods"),
    "data": ("data", "List the named datasets and where each is found"),
    "sink": ("sink", "Per-head sink divergence (harmful vs harmless) of a model or of every checkpoint of a run"),
    "run": ("run", "Run (or resume) an experiment file: a grid of curate/align/finetune/evaluate/sink stages, "
                   "shared by config hash"),
    "report": ("report", "Tables, figures and a self-contained HTML report for an experiment directory"),
    "curate": ("curate", "Select a core subset of the alignment data (Pharmacist-like selector and baselines)"),
    "repair": ("repair", "Repair a LoRA fine-tuned model after fine-tuning (SafeLoRA, Antidote, Panacea)"),
    "export": ("export", "Merge a run's model chain into one transformers folder for vLLM, lm-eval-harness, the hub"),
}


def chosen_command(argv: list[str] | None) -> str | None:
    """The sub-command named on the command line (the top-level parser has no option taking a value)."""
    argv = sys.argv[1:] if argv is None else argv
    return next((a for a in argv if not a.startswith("-")), None)


def top_parser() -> ArgParser:
    """``clinic [-h] COMMAND``: lists the commands; each command parses its own options."""
    parser = ArgParser(prog="clinic", description="Defend LLM fine-tuning against harmful fine-tuning: "
                       "curate -> align -> finetune -> repair -> evaluate -> report.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgParser)
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    return parser


def command_parser(name: str):
    """The full parser of command ``name`` (its ``func`` default runs it), with ``--verbose`` and
    ``--quiet`` (clinic's messages: progress and results on stdout, warnings on stderr)."""
    module = importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")
    parser = module.parser(name)
    messages = parser.add_mutually_exclusive_group()
    messages.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    messages.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    parser.set_defaults(command=name, func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        args = command_parser(argv[0]).parse_args(argv[1:])
    else:  # help, no command or an unknown one: the top-level parser says so (and exits)
        top_parser().parse_args(argv)
        return 2
    set_verbosity(getattr(args, "verbose", False), getattr(args, "quiet", False))
    try:
        if args.command in COMPUTE_COMMANDS and not getattr(args, "dry_run", False):  # a dry run computes nothing
            apply_cpu_math(say=True)
        args.func(args)
    except ClinicError as exc:
        print(f"clinic: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clinic: interrupted", file=sys.stderr)
        return 130
    return 0


__all__ = ["COMMANDS", "chosen_command", "command_parser", "main", "top_parser"]
