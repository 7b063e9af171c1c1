"""Fill the result tables of a documentation page from committed results folders.

A page marks each table with where it comes from: a report (``clinic report``'s table, its note
and any adaptive-attacker section: clinic.report.results_markdown) names its folder,

    <!-- report: results/calib-b -->
    (the table)
    <!-- /report -->

and a table of one of the scripts in TABLES (each in benchmarks/, with a ``table_markdown(argv)``)
names the script and its arguments, as on its command line from the repository's root:

    <!-- table: curation_table.py --full results/calib-b results/c5-pharmacist -->
    <!-- table: seed_table.py results/protocol-seeds --finetune surgery --labels Surgery SFT -->
    <!-- table: attack_table.py results/adaptive-smollm2 results/adaptive-repair-smollm2 -->
    <!-- table: sink_trend.py results/defences-ft -->
    (the table)
    <!-- /table -->

    python benchmarks/results_page.py docs/results-smollm2.md           # rewrite the marked tables
    python benchmarks/results_page.py docs/results-smollm2.md --check   # exit 1 if one is stale

Everything comes from the repository (results/store, shared by the results folders, holds each
stage's metrics and generations), so a fresh clone regenerates the page in seconds; tests/test_results_page.py checks it.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import functools
import importlib
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("protocol_table", "curation_table", "seed_table", "attack_table", "sink_trend", "tuned_table")  # the scripts a table marker may name
# a marker's body never runs into the next marker (an empty one, as a new page has, included)
MARKED = re.compile(r"(<!-- report: (?P<folder>\S+) -->\n)(?P<body>(?:(?!<!-- /?report).)*?)\n?<!-- /report -->", re.S)
TABLE = re.compile(r"(<!-- table: (?P<script>\S+?)(?: (?P<args>[^>]*?))? -->\n)(?P<body>(?:(?!<!-- /?table).)*?)\n?"
                   r"<!-- /table -->", re.S)


def script_of(name: str):
    """The module of a table marker's script, or SystemExit naming the scripts it may be."""
    module = name.removesuffix(".py")
    if module not in TABLES:
        near = difflib.get_close_matches(module, TABLES, n=1)
        hint = f"; did you mean {near[0]}.py?" if near else f"; one of {', '.join(t + '.py' for t in TABLES)}"
        raise SystemExit(f"unknown table script {name!r}{hint}")
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(module)


@functools.lru_cache(maxsize=None)
def _table(script: str, args: str) -> str:
    """A script's table: a function of its arguments and the committed results alone, so one
    process computes each once (the sink table's bootstrap takes seconds)."""
    return script_of(script).table_markdown(shlex.split(args))


def fill(page: str) -> str:
    from clinic.report.tables import results_markdown

    def report(match: re.Match) -> str:
        body = results_markdown(ROOT / match["folder"], title=False).rstrip("\n")
        return f"{match.group(1)}{body}\n<!-- /report -->"

    def table(match: re.Match) -> str:
        return f"{match.group(1)}{_table(match['script'], match['args'] or '')}\n<!-- /table -->"

    with contextlib.chdir(ROOT):  # a marker's paths are relative to the repository's root
        return TABLE.sub(table, MARKED.sub(report, page))


def count(page: str) -> int:
    return sum(1 for _ in MARKED.finditer(page)) + sum(1 for _ in TABLE.finditer(page))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a table is stale")
    args = parser.parse_args(argv)
    page = args.page.read_text(encoding="utf-8")
    if not count(page):
        print(f"results_page: error: {args.page} has no <!-- report: FOLDER --> or <!-- table: SCRIPT ARGS --> marker",
              file=sys.stderr)
        return 2
    from _common import one_line_errors  # benchmarks/ is on sys.path: this script's own folder

    with one_line_errors("results_page"):
        filled = fill(page)
    if args.check:
        stale = filled != page
        print(f"{args.page}: {'stale; run python benchmarks/results_page.py ' + str(args.page) if stale else 'current'}")
        return int(stale)
    args.page.write_text(filled, encoding="utf-8")
    print(f"{args.page}: {count(page)} tables filled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
