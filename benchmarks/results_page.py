"""Fill the result tables of a documentation page from committed results folders.

A page marks each table with the folder it comes from:

    <!-- report: results/calib-b -->
    (the table, its note and any adaptive-attacker section: clinic.report.results_markdown)
    <!-- /report -->

and a curation table (benchmarks/curation_table.py, its arguments after the colon):

    <!-- curation-table: --full results/calib-b results/c5-pharmacist -->
    (the table)
    <!-- /curation-table -->

    python benchmarks/results_page.py docs/results-smollm2.md           # rewrite the marked tables
    python benchmarks/results_page.py docs/results-smollm2.md --check   # exit 1 if one is stale

Everything comes from the repository (results/<name>/store holds each stage's metrics and
generations), so a fresh clone regenerates the page in seconds; tests/test_results_page.py checks it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a marker's body never runs into the next marker (an empty one, as a new page has, included)
MARKED = re.compile(r"(<!-- report: (?P<folder>\S+) -->\n)(?P<body>(?:(?!<!-- /?report).)*?)\n?<!-- /report -->", re.S)


CURATION = re.compile(r"(<!-- curation-table: (?P<args>[^>]*?) -->\n)(?P<body>(?:(?!<!-- /?curation-table).)*?)\n?"
                      r"<!-- /curation-table -->", re.S)


def fill(page: str) -> str:
    from clinic.report import results_markdown

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))  # curation_table, imported by a curation marker

    def table(match: re.Match) -> str:
        body = results_markdown(ROOT / match["folder"], title=False).rstrip("\n")
        return f"{match.group(1)}{body}\n<!-- /report -->"

    def curation(match: re.Match) -> str:
        import curation_table

        args = curation_table.parse_args(match["args"].split())
        body = curation_table.markdown(curation_table.rows(ROOT / args.full, [ROOT / c for c in args.curated], args.judge))
        return f"{match.group(1)}{body}\n<!-- /curation-table -->"

    return CURATION.sub(curation, MARKED.sub(table, page))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a table is stale")
    args = parser.parse_args(argv)
    page = args.page.read_text(encoding="utf-8")
    if not MARKED.search(page) and not CURATION.search(page):
        print(f"results_page: error: {args.page} has no <!-- report: FOLDER --> or <!-- curation-table: ... --> marker",
              file=sys.stderr)
        return 2
    filled = fill(page)
    if args.check:
        stale = filled != page
        print(f"{args.page}: {'stale; run python benchmarks/results_page.py ' + str(args.page) if stale else 'current'}")
        return int(stale)
    args.page.write_text(filled, encoding="utf-8")
    print(f"{args.page}: {sum(1 for _ in MARKED.finditer(page)) + sum(1 for _ in CURATION.finditer(page))} tables filled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
