"""``clinic sink``: its argparse sub-parser and the command that runs :func:`run_sink_analysis`."""

from __future__ import annotations

import json

from ..attention import SINK_MODES
from .analysis import run_sink_analysis
from .divergence import DEFAULT_HARMFUL, DEFAULT_HARMLESS


def add_sink_command(subparsers, help_text: str) -> None:
    """Add ``clinic sink`` to an argparse sub-parser set (``func`` runs it); ``help_text`` is its line in
    ``clinic --help``, kept in ``clinic.cli.COMMAND_HELP`` (listed there without importing this module)."""
    p = subparsers.add_parser(
        "sink", help=help_text,
        description="Sink divergence d[l,h] = mean sink attention on harmful QA - on harmless QA, per layer and head; "
                    "writes CSV, JSON and figures.")
    p.add_argument("--model", required=True, help="model name/path, or a run directory (all its checkpoints)")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--n", type=int, default=100, help="samples of each kind (default 100)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--sink-index", type=int, default=0, help="sink = first token + this offset (default 0)")
    p.add_argument("--sink-mode", choices=SINK_MODES, default="fixed",
                   help="fixed index, or each sample's most attended position (default fixed)")
    p.add_argument("--max-length", type=int, default=512, help="truncate samples to this many tokens (default 512)")
    p.add_argument("--harmful-source", default=DEFAULT_HARMFUL, help=f"harmful QA data (default {DEFAULT_HARMFUL})")
    p.add_argument("--harmless-source", default=DEFAULT_HARMLESS,
                   help=f"harmless/safe QA data (default {DEFAULT_HARMLESS}; 'refusals' for refusal answers)")
    p.add_argument("--scores", default=None,
                   help="JSON of harmful scores by step ({step: score}) or an evaluation metrics.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=cmd_sink)


def cmd_sink(args) -> None:
    out = run_sink_analysis(args.model, args.output, n=args.n, batch_size=args.batch_size, sink_index=args.sink_index,
                            harmful_source=args.harmful_source, harmless_source=args.harmless_source,
                            max_length=args.max_length, mode=args.sink_mode, scores=args.scores,
                            overwrite=args.overwrite)
    summary = json.loads((out / "sink.json").read_text())
    for e in summary["entries"]:
        print(f"{e['label']:>12}: {e['positive_heads']}/{e['total_heads']} heads with positive sink divergence")
    print(f"wrote {out}")
