"""``clinic report``: tables, figures and an HTML report of an experiment directory (:mod:`clinic.report.tables`)."""

from __future__ import annotations

from .parser import ArgParser


def parser(name: str) -> ArgParser:
    p = ArgParser(prog=f"clinic {name}", description="Tables, figures and a self-contained HTML report for an "
                  "experiment directory written by `clinic run`.")
    p.add_argument("run_dir", help="experiment directory written by `clinic run`")
    p.add_output("report directory", default="RUN_DIR/report")
    p.add_argument("--guard-points", type=float, default=5.0, metavar="POINTS",
                   help="adaptive attacker: an attack counts when its fine-tune accuracy is within POINTS of the "
                        "defence's best attack (default 5)")
    p.add_argument("--guard-fa", type=float, default=None, metavar="PERCENT",
                   help="adaptive attacker: count the attacks with fine-tune accuracy >= PERCENT instead")
    p.add_argument("--choose", default=None, choices=("align", "finetune", "repair", "experiment"), metavar="FIELD",
                   help="a defence search on the validation split: apply the choice rule (docs/defence-search.md) "
                        "to the trials, told apart by their FIELD label (align, finetune or repair), or by experiment "
                        "(--trials); writes choice.json and choice.md")
    p.add_argument("--trials", nargs="+", default=(), metavar="RUN",
                   help="with --choose experiment: the trial experiments' directories (RUN_DIR holds SFT's reference)")
    p.add_argument("--select-on", default=None, metavar="RUN",
                   help="adaptive attacker: choose each defence's worst attack on RUN, an experiment directory "
                        "with the same attacks evaluated on the validation split, and report its test-split score")
    return p


def run(args) -> None:
    from ..report.adaptive import Guard
    from ..report.tables import write_report

    guard = Guard(args.guard_points, args.guard_fa)  # checked before anything is written
    write_report(args.run_dir, args.output, overwrite=args.overwrite, guard=guard, choose_field=args.choose,
                 select_on=args.select_on, trials=args.trials)
