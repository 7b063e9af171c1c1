"""``clinic export``: a finished run's model chain merged into one ordinary transformers folder
(:mod:`clinic.stages.export`)."""

from __future__ import annotations

from ..settings import LOGGER

import dataclasses

from .options import ConfigParser, values


def parser(name: str) -> ConfigParser:
    from ..stages.export import ExportConfig
    from . import COMMANDS

    p = ConfigParser(prog=f"clinic {name}", description=f"{COMMANDS[name][1]}: the base model with every adapter "
                     "of the run's chain merged, saved as safetensors with its tokenizer (chat template included) "
                     "and a model card (README.md) with the run's provenance; AutoModelForCausalLM.from_pretrained, "
                     "vLLM and lm-evaluation-harness load it as it is.")
    p.add_argument("model", help="a finished align, finetune or repair run (or a PEFT LoRA adapter folder)")
    p.add_output("model folder")
    p.add_dataclass(ExportConfig, "export")
    return p


def run(args) -> None:
    from ..stages.export import ExportConfig, run_export

    cfg = ExportConfig(**values(args, [f.name for f in dataclasses.fields(ExportConfig)]))
    out = run_export(args.model, args.output, cfg, overwrite=args.overwrite)
    LOGGER.info(f"exported to {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it; README.md has its provenance")
