"""Add the 95 % Wilson interval to the bare percentages of a markdown table, given n.

    python benchmarks/add_intervals.py docs/finetune-smollm2.md \
        --column "HS classifier (%)=40" --column "SST2 FA (%)=100"

Every table of FILE whose header holds all the named columns is rewritten in place: the header
becomes ``HS classifier (%) [95 % CI], n=40`` and each number of those columns gains its interval,
``75.0`` -> ``75.0 [59.8, 85.8]`` (bold and several numbers per cell, ``**7.5** / 2.5``, are
kept). The numbers themselves are never changed; a number that is not a whole count of n
(k = value × n / 100 not an integer, e.g. a mean over seeds or a wrong n) stops the script
before anything is written. Cells that already carry an interval are left as they are.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from clinic.evaluation.stats import wilson_interval

NUMBER = re.compile(r"(?<![\d.\[,])(\d+(?:\.\d+)?)(\*\*)?(?! ?\[)(?![\d.])")


def with_interval(cell: str, n: int, where: str) -> str:
    if "[" in cell:
        return cell

    def add(match: re.Match) -> str:
        value = float(match.group(1))
        k = value * n / 100
        if abs(k - round(k)) > 0.05 * n / 100 + 1e-9 or not 0 <= round(k) <= n:
            raise SystemExit(f"add_intervals: {where}: {match.group(1)} % is not a whole count of n={n}")
        low, high = wilson_interval(round(k), n)
        return f"{match.group(0)} [{low:.1f}, {high:.1f}]"

    return NUMBER.sub(add, cell)


def rewrite(text: str, columns: dict[str, int], path: str) -> tuple[str, int]:
    """``text`` with every matching table rewritten, and how many tables were."""
    lines, tables = text.split("\n"), 0
    i = 0
    while i < len(lines):
        cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
        is_header = lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---")
        if not (is_header and all(name in cells for name in columns)):
            i += 1
            continue
        index = {cells.index(name): (name, n) for name, n in columns.items()}
        lines[i] = "| " + " | ".join(f"{c} [95 % CI], n={index[j][1]}" if j in index and "[95 % CI]" not in c else c
                                     for j, c in enumerate(cells)) + " |"
        i += 2
        while i < len(lines) and lines[i].startswith("|"):
            row = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            row = [with_interval(c, index[j][1], f"{path}:{i + 1} {index[j][0]}") if j in index and c else c
                   for j, c in enumerate(row)]
            lines[i] = "| " + " | ".join(row) + " |"
            i += 1
        tables += 1
    return "\n".join(lines), tables


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", help="markdown file, rewritten in place")
    parser.add_argument("--column", action="append", required=True, metavar="NAME=N",
                        help="a header cell exactly as written and the n behind its percentages")
    args = parser.parse_args(argv)
    columns = {}
    for spec in args.column:
        name, _, n = spec.rpartition("=")
        if not name or not n.isdigit() or int(n) < 1:
            parser.error(f"--column wants NAME=N with N a positive count, got {spec!r}")
        columns[name] = int(n)
    path = Path(args.file)
    text, tables = rewrite(path.read_text(), columns, args.file)
    if not tables:
        print(f"add_intervals: no table of {path} has the columns {', '.join(columns)}", file=sys.stderr)
        return 2
    path.write_text(text)
    print(f"{path}: {tables} table(s) rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
