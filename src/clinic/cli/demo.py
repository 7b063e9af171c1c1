"""``clinic demo``: align, attack and measure a model end to end (:class:`clinic.experiment.demo.DemoConfig`)."""

from __future__ import annotations

import dataclasses
import time

from .options import ConfigParser, add_execution, execution, values


def parser(name: str) -> ConfigParser:
    from ..experiment.demo import DemoConfig

    p = ConfigParser(prog=f"clinic {name}", description="On SmolLM2-135M-Instruct: evaluate the base model, SFT-align it "
                     "(refusals + Alpaca rows), then fine-tune it on SST2 without harmful samples (p=0), with them "
                     "(p=0.2) and with them under a defence (Surgery); harmful score (two judges) and SST2 accuracy "
                     "with 95 % intervals for every model, the paired differences, and whether p=0 and p>0 are "
                     "apart. --setting quick (~10 min on 2 cores: the calibrated protocol's alignment, loaded from "
                     "the copy clinic ships, and a short attack) or protocol (the calibrated protocol trained end to "
                     "end, ~1 h 45 min); see docs/protocol.md.")
    p.add_output("demo directory", default="runs/demo-<time>")
    p.add_dataclass(DemoConfig, "demo settings")
    add_execution(p)
    return p


def run(args) -> None:
    from ..experiment.demo import DemoConfig, run_demo
    from ..report.demo import write_demo_table

    cfg = DemoConfig(**values(args, [f.name for f in dataclasses.fields(DemoConfig)]))
    root, judges, shipped = run_demo(cfg, args.output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}",
                                     overwrite=args.overwrite, execution=execution(args))
    write_demo_table(root, cfg, judges, shipped)
