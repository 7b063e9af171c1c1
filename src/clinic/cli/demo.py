"""``clinic demo``: align, attack and measure a model end to end (:class:`clinic.demo.DemoConfig`)."""

from __future__ import annotations

import dataclasses
import time

from .options import ConfigParser, values


def parser(name: str) -> ConfigParser:
    from ..demo import DemoConfig

    p = ConfigParser(prog=f"clinic {name}", description="On SmolLM2-135M-Instruct: measure harmful score (two judges) "
                     "and SST2 accuracy of the base model, SFT-align it on refusals, measure, harmful-fine-tune it "
                     "(SST2, p=0.1), measure; print the table and write everything to the output directory.")
    p.add_output("demo directory", default="runs/demo-<time>")
    p.add_dataclass(DemoConfig, "demo settings")
    return p


def run(args) -> None:
    from ..demo import DemoConfig, run_demo

    cfg = DemoConfig(**values(args, [f.name for f in dataclasses.fields(DemoConfig)]))
    run_demo(cfg, args.output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}", overwrite=args.overwrite)
