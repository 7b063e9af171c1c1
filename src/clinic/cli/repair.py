"""``clinic repair``: repair a LoRA fine-tuned model after fine-tuning (:mod:`clinic.repair`).

Options: the run's own (model, method, output), the repair settings
(:class:`clinic.repair.base.RepairConfig` fields) and the options of every repair method.
"""

from __future__ import annotations

from ..settings import LOGGER

from .options import ConfigParser, add_execution, execution, values


def parser(name: str) -> ConfigParser:
    from ..repair.base import repair_methods
    from ..repair.base import RepairConfig

    methods = repair_methods()
    listing = "\n".join(f"  {n:10s} {spec.summary}" for n, spec in methods.items())
    p = ConfigParser(prog=f"clinic {name}", description="Repair a LoRA fine-tuned model after fine-tuning "
                     "(post-fine-tuning defence). Writes a run directory (adapter/, config.yaml, metrics.json, "
                     f"run.json) that `clinic evaluate --model` loads.\n\nmethods:\n{listing}")
    p.add_argument("--model", required=True, help="a finished LoRA fine-tuning run directory (clinic finetune)")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(methods)}")
    p.add_output()
    p.add_dataclass(RepairConfig, "settings", unset=True)
    method_options = p.add_method_options("repair", methods)
    p.set_defaults(method_options=method_options)
    add_execution(p)
    p.deprecate({"--harmful-data": "--harmful-source"})  # one name per concept
    return p


def run(args) -> None:
    import dataclasses
    import json

    from ..repair.base import get_repair
    from ..repair.base import RepairConfig
    from ..stages.repair import run_repair, summary_line
    from .train import method_values

    spec = get_repair(args.method)
    settings = RepairConfig(**values(args, [f.name for f in dataclasses.fields(RepairConfig)]))
    out = run_repair(args.model, spec.name, args.output, method_values(args, spec), settings, overwrite=args.overwrite,
                     **execution(args))
    LOGGER.info(summary_line(json.loads((out / "metrics.json").read_text())))
    LOGGER.info(f"repair run written to {out}; measure it with: clinic evaluate --model {out} ...")
