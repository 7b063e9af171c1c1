"""``clinic report``: tables, figures and an HTML report of an experiment directory (:mod:`clinic.report`)."""

from __future__ import annotations

from .parser import ArgParser


def parser(name: str) -> ArgParser:
    p = ArgParser(prog=f"clinic {name}", description="Tables, figures and a self-contained HTML report for an "
                  "experiment directory written by `clinic run`.")
    p.add_argument("run_dir", help="experiment directory written by `clinic run`")
    p.add_output("report directory", default="RUN_DIR/report")
    return p


def run(args) -> None:
    from ..report import write_report

    write_report(args.run_dir, args.output, overwrite=args.overwrite)
