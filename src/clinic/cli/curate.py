"""``clinic curate``: score the alignment data with a selector and keep a core subset
(:class:`clinic.curation.CurateConfig`, :func:`clinic.curation.run_curate`)."""

from __future__ import annotations

from ..settings import LOGGER

import dataclasses
import json

from .options import ConfigParser, add_execution, execution, values


def parser(name: str) -> ConfigParser:
    from ..stages.curate import CurateConfig
    from ..curation.base import selectors
    from . import COMMANDS

    listing = "\n".join(f"  {sel:14s} {spec.summary}" for sel, spec in selectors().items())
    p = ConfigParser(prog=f"clinic {name}", description=f"{COMMANDS[name][1]}: score every candidate alignment "
                     "sample with a selector and keep the top k. Writes a run directory: subset.jsonl (for "
                     "`clinic align --source`), scores.csv/.jsonl, scores.png, config.yaml, metrics.json."
                     f"\n\nselectors:\n{listing}")
    p.add_output()
    p.add_dataclass(CurateConfig, "curation")
    add_execution(p)
    p.deprecate({"--data": "--source", "--harmful-data": "--harmful-source"})  # one name per concept
    return p


def run(args) -> None:
    from ..stages.curate import CurateConfig, run_curate
    from ..stages.curate import summary_lines

    cfg = CurateConfig(**values(args, [f.name for f in dataclasses.fields(CurateConfig)]))
    out = run_curate(cfg, args.output, overwrite=args.overwrite, **execution(args))
    LOGGER.info("\n".join(summary_lines(json.loads((out / "metrics.json").read_text()))))
    LOGGER.info(f"curation written to {out}; align on the subset with: clinic align --source {out / 'subset.jsonl'} ...")
