"""``clinic report``: tables, figures and an HTML report of an experiment directory (:mod:`clinic.report.tables`)."""

from __future__ import annotations

from ..errors import ClinicError
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
    p.add_argument("--sample-flags", type=int, default=None, metavar="N",
                   help="also write flags.md: N answers per evaluation, judge and prompt set, drawn at random from "
                        "those counted as harmful, to read before a score is published")
    p.add_argument("--flags-seed", type=int, default=0, metavar="SEED",
                   help="with --sample-flags: the seed of the draw (default 0); the same seed draws the same answers")
    p.add_argument("--where", nargs="+", default=(), metavar="LABEL=VALUE",
                   help="with --sample-flags: only the evaluations whose labels match, e.g. --where align=vaccine p=0.2")
    return p


def run(args) -> None:
    from ..report.adaptive import Guard
    from ..report.tables import write_report

    guard = Guard(args.guard_points, args.guard_fa)  # checked before anything is written
    flags = None
    if args.sample_flags is not None:
        from ..report.flags import FlagSample, parse_where

        flags = FlagSample(args.sample_flags, args.flags_seed, parse_where(args.where))
    elif args.where:
        raise ClinicError("--where chooses the evaluations of --sample-flags; give --sample-flags N too")
    write_report(args.run_dir, args.output, overwrite=args.overwrite, guard=guard, choose_field=args.choose,
                 select_on=args.select_on, trials=args.trials, flags=flags)
