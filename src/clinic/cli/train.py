"""``clinic align`` and ``clinic finetune``: train a model with a registered method.

Options: the run's own (model, method, output, preset), the data (:class:`clinic.stages.train.DataConfig`
fields), the training settings (:class:`clinic.methods.config.TrainConfig` fields, unset unless
given, so that a ``--preset`` value stands) and the options of every method of the stage.
"""

from __future__ import annotations

from ..settings import LOGGER

from ..errors import ClinicError
from .options import ConfigParser, add_execution, execution, values

# the DataConfig fields each stage takes, in the order of the help
DATA_FIELDS = {
    "align": ("source", "n", "columns", "selection", "helpful", "helpful_n"),
    "finetune": ("task", "n", "poison_ratio", "harmful_source", "source", "columns", "selection"),
}
# old option spellings, still accepted with a warning (one name per setting: the field's)
RENAMED = {
    "align": {"--data": "--source", "--harmful-data": "--harmful-source"},
    "finetune": {"--data": "--source", "--harmful-data": "--harmful-source"},
}
SOURCE_HELP = {
    "align": "alignment data: a named QA dataset or a file (default: refusals)",
    "finetune": "a user file of prompt/response rows instead of --task",
}


def parser(stage: str) -> ConfigParser:
    from ..modeling.training import PRESETS, TrainConfig
    from ..methods.registry import methods_for
    from ..stages.train import DataConfig
    from . import COMMANDS

    methods = methods_for(stage)
    verb = COMMANDS[stage][1]
    listing = "\n".join(f"  {n:10s} {s.summary}" for n, s in methods.items())
    p = ConfigParser(prog=f"clinic {stage}", description=f"{verb}. Writes a run directory (config.yaml, "
                     f"data_indices.json, adapter/ or model/, train_log.jsonl, metrics.json).\n\nmethods:\n{listing}")
    p.add_argument("--model", required=True, help="alias (smollm2-135m-instruct, gemma3-270m, tiny-random-llama), "
                   "local directory, hub id, or a previous run directory")
    p.add_argument("--method", default="sft", help=f"one of: {', '.join(methods)} (default sft)")
    p.add_output()
    p.add_argument("--preset", help=f"reference settings: {', '.join(PRESETS)}")
    p.add_dataclass(DataConfig, "data", only=DATA_FIELDS[stage], helps={"source": SOURCE_HELP[stage]})
    p.add_dataclass(TrainConfig, "training", unset=True)
    method_options = p.add_method_options(stage)
    if stage == "finetune":
        p.add_argument("--sink-every", type=int, default=0, help="record the positive-sink-head count every N steps")
    add_execution(p, dtype=False, training=True)  # training loads fp32; its precision is the hashed --bf16
    p.deprecate(RENAMED[stage])
    p.set_defaults(method_options=method_options)
    return p


def method_values(args, spec) -> dict:
    """The method options the user set; an option of another method is an error."""
    import dataclasses

    allowed = {f.name for f in dataclasses.fields(spec.config)}
    given = values(args, args.method_options)
    for name in given:
        if name not in allowed:
            raise ClinicError(f"option --{name.replace('_', '-')} does not apply to method {spec.name!r}")
    return given


def run(args) -> None:
    import dataclasses

    from ..data.readers import parse_columns
    from ..modeling.training import TrainConfig, train_config
    from ..methods.registry import get_method
    from ..modeling.parallel import rank
    from ..stages.train import DataConfig, run_train

    stage = args.command
    spec = get_method(args.method, stage)
    train = train_config(args.preset, **values(args, [f.name for f in dataclasses.fields(TrainConfig)]))
    data = values(args, DATA_FIELDS[stage])
    data["columns"] = parse_columns(args.columns)
    callbacks = []
    sink_every = getattr(args, "sink_every", 0)
    if sink_every < 0:
        raise ClinicError(f"--sink-every must be 0 (off) or a positive step count, got {sink_every}")
    if sink_every:
        from ..sink import SinkCountCallback

        callbacks.append(SinkCountCallback(every=sink_every))
    out = run_train(stage, model=args.model, method=spec.name, train=train, data=DataConfig(**data), output=args.output,
                    method_options=method_values(args, spec), overwrite=args.overwrite, callbacks=callbacks,
                    **execution(args))
    if rank() == 0:  # under accelerate launch every process returns here
        LOGGER.info(f"{stage} run written to {out}")
