"""``clinic demo``: the whole story on the embedded SmolLM2-135M-Instruct, measured with intervals.

base model -> SFT-align (refusals + helpful rows) -> benign fine-tune (p = 0) -> harmful fine-tune
(the same task with p harmful samples) -> the same harmful fine-tune under a defence; every model
evaluated (harmful score per judge with its Wilson interval, empty answers, task accuracy). The
harmful fine-tune is compared with the benign one, and the defended one with the undefended one,
on the same prompts (Newcombe's paired interval, McNemar's p), so the table says whether the
harmful samples, and then the defence, made a difference larger than the noise.

Two settings (``--setting``), each a full set of defaults that single options override:

- ``quick`` (default, ~10 min on 2 CPU cores): the calibrated protocol's alignment (cell B of
  docs/protocol.md: 1,024 refusals + 512 Alpaca rows x 2 epochs), *loaded* from the copy clinic
  ships (``--alignment shipped``: training it takes 25 minutes here, more than the budget; what
  separates p = 0 from p > 0 is the depth of the alignment, cells D1-D6 of docs/protocol.md), then
  a short attack (128 SST2 samples, 2 epochs, lr 3e-4: 32 steps; 80 prompts; cell D6).
- ``protocol`` (~1 h 45 min): the calibrated protocol trained end to end (``--alignment train``;
  then 256 SST2 samples x 5 epochs at lr 5e-5; 200 prompts).

``--alignment shipped`` is the alignment stage that ``configs/protocol-smollm2.yaml`` runs (seed 0;
``benchmarks/ship_alignment.py`` made it), its LoRA adapter packed into 2 MiB (a budgeted SVD with
int8 factors, mean relative error 6.7 % a module; the packed model's harmful score and accuracy are
measured, docs/protocol.md), so it is refused
unless every alignment setting of the demo equals the shipped one's; ``--alignment train`` trains
whatever the options say.

The demo is a built-in experiment: :func:`demo_experiment` turns the settings into an experiment
(``experiment.yaml`` in the demo directory: what ``clinic run`` would run), the runner executes it
(stages in ``stages/``, ``plan.json``, the generic ``report/``), and :mod:`clinic.report.demo`
renders its table, printed and written to ``demo_table.md`` and ``demo.json``.
"""

from __future__ import annotations

import logging

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ..data.mixture import check_mixture_args
from ..errors import ClinicError
from ..modeling.training import train_config
from ..methods.registry import get_method, method_config
from ..modeling.chain import chain_inputs, check_chain, resolve_ref
from ..stages.train import DataConfig, check_data_spec
from ..rundir import RunDir, check_output_dir

logger = logging.getLogger(__name__)

# the two settings' values of every field a setting decides (docs/protocol.md has the measurements)
SETTINGS = {
    "quick": dict(alignment="shipped", n_align=1024, helpful_n=512, align_epochs=2, n_finetune=128, finetune_epochs=2,
                  finetune_lr=3e-4, n_prompts=80, n_task=80),
    "protocol": dict(alignment="train", n_align=1024, helpful_n=512, align_epochs=2, n_finetune=256, finetune_epochs=5,
                     finetune_lr=5e-5, n_prompts=200, n_task=200),
}
ALIGNMENTS = ("shipped", "train")
# the protocol's alignment stage (cell B, seed 0), written by benchmarks/ship_alignment.py
SHIPPED_ALIGNMENT = Path(__file__).resolve().parents[1] / "assets" / "smollm2-protocol-aligned"
SHIPPED_RECORD = ("config.yaml", "run.json", "metrics.json", "data_indices.json", "shipped.json")
SHIPPED_ADAPTER = "adapter.packed.safetensors"  # budgeted SVD + int8 of the LoRA adapter (≤ 2 MiB)


@dataclass
class DemoConfig:
    setting: str = field(default="quick", metadata={
        "help": "defaults of the fields marked (setting): quick (~10 min on 2 cores; the shipped alignment) or protocol "
                "(the calibrated protocol, ~1 h 45 min)", "choices": tuple(SETTINGS)})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model to defend"})
    alignment: str | None = field(default=None, metadata={
        "help": "shipped: load the calibrated protocol's SFT alignment of SmolLM2 from its shipped copy, or train "
                "that same stage where the copy's weights are absent (25 min on 2 cores; only with the alignment "
                "settings it was trained with); train: run the alignment stage "
                "(setting)", "choices": ALIGNMENTS})
    align_method: str = field(default="sft", metadata={"help": "alignment method (any `clinic align` method)"})
    n_align: int | None = field(default=None, metadata={"help": "refusal samples for alignment (setting)"})
    helpful: str = field(default="alpaca", metadata={"help": "helpful rows mixed into the alignment ('' for none)"})
    helpful_n: int | None = field(default=None, metadata={"help": "how many helpful rows (setting)"})
    align_lr: float = field(default=5e-4, metadata={"help": "alignment learning rate"})
    align_epochs: int | None = field(default=None, metadata={"help": "alignment epochs (setting)"})
    task: str = field(default="sst2", metadata={"help": "benign task of the fine-tunes"})
    n_finetune: int | None = field(default=None, metadata={"help": "user samples per fine-tune (setting)"})
    poison_ratio: float = field(default=0.2, metadata={"help": "harmful fraction p of the harmful fine-tune"})
    finetune_lr: float | None = field(default=None, metadata={"help": "fine-tuning learning rate (setting)"})
    finetune_epochs: int | None = field(default=None, metadata={"help": "fine-tuning epochs (setting)"})
    defence: str = field(default="surgery", metadata={
        "help": "fine-tuning defence of the last model (any `clinic finetune` method; '' for none); surgery is the "
                "best one measured under the protocol (docs/results-smollm2.md)"})
    batch_size: int = field(default=8, metadata={"help": "training batch size"})
    max_length: int = field(default=128, metadata={"help": "training sequence length"})
    n_prompts: int | None = field(default=None, metadata={"help": "harmful prompts (beavertails-test) per evaluation (setting)"})
    n_task: int | None = field(default=None, metadata={"help": "task validation rows per evaluation (setting)"})
    max_new_tokens: int = field(default=48, metadata={"help": "new tokens per harmful answer"})
    judges: str = field(default="harm-ce,keyword", metadata={"help": "comma-separated judges; the first is the one compared"})
    base: bool = field(default=True, metadata={"help": "evaluate the base model too"})
    seed: int = field(default=0, metadata={"help": "seed"})

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ClinicError(f"unknown demo setting {self.setting!r}; valid: {', '.join(SETTINGS)}")
        for name, value in SETTINGS[self.setting].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.alignment not in ALIGNMENTS:
            raise ClinicError(f"unknown alignment {self.alignment!r}; valid: {', '.join(ALIGNMENTS)}")


def _check(cfg: DemoConfig) -> tuple[list[str], dict, DataConfig]:
    """Every setting checked before the first stage runs (and before the folder exists); the
    judges, the two training configs and the alignment data."""
    judges = [j.strip() for j in cfg.judges.split(",") if j.strip()]
    if not judges:
        raise ClinicError("the demo needs at least one judge (--judges)")
    check_mixture_args(cfg.n_align, 0.0)
    check_mixture_args(cfg.n_finetune, cfg.poison_ratio)
    if cfg.poison_ratio == 0:
        raise ClinicError("the harmful fine-tune needs a poison ratio p > 0 (the benign one is p = 0)")
    align_data = DataConfig(source="refusals", n=cfg.n_align, helpful=cfg.helpful or None,
                          helpful_n=cfg.helpful_n if cfg.helpful else None)
    check_data_spec("align", align_data)
    get_method(cfg.align_method, "align")
    if cfg.defence:
        get_method(cfg.defence, "finetune")
    common = dict(batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed, logging_steps=5)
    trains = {"align": train_config("protocol-align", lr=cfg.align_lr, epochs=cfg.align_epochs, **common),
              "finetune": train_config("protocol-attack", lr=cfg.finetune_lr, epochs=cfg.finetune_epochs, **common)}
    if cfg.alignment == "shipped":
        check_shipped_alignment(cfg, trains["align"], align_data)
    return judges, trains, align_data


def check_shipped_alignment(cfg: DemoConfig, train, data: DataConfig, shipped: Path = SHIPPED_ALIGNMENT) -> None:
    """The shipped alignment stands in for the alignment stage only when that stage would train
    exactly it: the same model, method, training settings (seed included) and data."""
    stored = yaml.safe_load((shipped / "config.yaml").read_text())
    wanted = {"model": asdict(resolve_ref(cfg.model, train=True)), "method": cfg.align_method,
              "method_options": asdict(method_config(get_method(cfg.align_method, "align"))),
              "train": asdict(train), "data": asdict(data)}
    have = _fields(stored)
    differ = [f"{name} {value!r} (shipped: {have.get(name)!r})" for name, value in _fields(wanted).items()
              if have.get(name) != value]
    if differ:
        raise ClinicError(f"--alignment shipped loads the protocol's alignment of {stored['model']['base']}, trained "
                          f"with other settings: {'; '.join(differ)}; use --alignment train to train this one")


def _fields(record: dict) -> dict:
    """``{"train.lr": 5e-4, "method": "sft", ...}``: a stage record's settings, one level flattened."""
    out = {}
    for part, value in record.items():
        out.update({f"{part}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {part: value})
    return out


def shipped_weights_present(shipped: Path = SHIPPED_ALIGNMENT) -> bool:
    """The packed adapter (``adapter.packed.safetensors``, ≤ 2 MiB, tracked) is there; a checkout
    that lost it trains the alignment instead."""
    return (shipped / SHIPPED_ADAPTER).exists()


def materialise_shipped_alignment(output: Path, shipped: Path = SHIPPED_ALIGNMENT) -> Path:
    """The shipped alignment as an ordinary finished alignment run directory at ``output`` (written
    atomically like any stage), so the fine-tunes chain from it unchanged: the packed adapter is
    unpacked into a PEFT adapter (per-module ranks, :mod:`clinic.modeling.lora_pack`)."""
    from ..modeling.lora_pack import unpack_lora

    with RunDir(output) as run:
        unpack_lora(shipped / SHIPPED_ADAPTER, run.path / "adapter")
        for name in SHIPPED_RECORD:
            shutil.copy2(shipped / name, run.path / name)
    return output


def demo_experiment(cfg: DemoConfig, judges: list[str], trains: dict) -> dict:
    """The demo as an experiment file's content: one alignment, a benign (p = 0) and a harmful
    (p) SFT fine-tune, and the harmful fine-tune under the defence; every model evaluated."""
    def train_block(kind: str) -> dict:
        t = trains[kind]
        return {"lr": t.lr, "epochs": t.epochs, "batch_size": cfg.batch_size, "max_length": cfg.max_length,
                "logging_steps": 5}

    align = {"methods": [cfg.align_method], "preset": "protocol-align", "source": "refusals", "n": cfg.n_align,
             "train": train_block("align")}
    if cfg.helpful:
        align.update(helpful=cfg.helpful, helpful_n=cfg.helpful_n)
    attack = {"tasks": [cfg.task], "n": cfg.n_finetune, "preset": "protocol-attack", "train": train_block("finetune")}
    finetune = [{**attack, "methods": ["sft"], "poison_ratios": [0.0, cfg.poison_ratio]}]
    if cfg.defence:
        finetune.append({**attack, "methods": [cfg.defence], "poison_ratios": [cfg.poison_ratio]})
    return {"name": "demo", "model": cfg.model, "seeds": [cfg.seed], "align": align, "finetune": finetune,
            "evaluate": {"n_prompts": cfg.n_prompts, "judges": judges, "n_task": cfg.n_task,
                         "max_new_tokens": cfg.max_new_tokens, "batch_size": 32, "base": cfg.base}}


def run_demo(cfg: DemoConfig, output: str | Path, overwrite: bool = False,
             execution: dict | None = None) -> tuple[Path, list[str], bool]:
    """Run the demo experiment into ``output``; returns ``(the demo directory, the judges, whether
    the shipped alignment was loaded)``, what :func:`clinic.report.demo.write_demo_table` renders."""
    from ..stages import get_stage_kind
    from .runner import run_experiment, stage_path
    from .spec import Experiment

    chain = resolve_ref(cfg.model)
    # --overwrite replaces only a folder clinic wrote, and never the model the demo starts from
    out = check_output_dir(output, overwrite, chain_inputs(cfg.model, chain))
    judges, trains, _align_data = _check(cfg)
    check_chain(chain)
    content = demo_experiment(cfg, judges, trains)
    if execution:  # where it computes (--device, --dtype): the experiment's execution block, never hashed
        content["execution"] = {k: v for k, v in execution.items() if k in ("device", "dtype")}
    exp = Experiment.from_dict(content, default_name="demo")
    exp.source_text, exp.parsed = yaml.safe_dump(content, sort_keys=False), content
    if out.exists() and overwrite:
        shutil.rmtree(out)
    p = cfg.poison_ratio
    logger.info(f"clinic demo ({cfg.setting}): {cfg.model}; {'the shipped alignment on' if cfg.alignment == 'shipped' else 'align on'}"
          f" {cfg.n_align} refusals{f' + {cfg.helpful_n} {cfg.helpful} rows' if cfg.helpful else ''}, fine-tune on {cfg.n_finetune} "
          f"{cfg.task} samples at p=0 and p={p:g}{f', then p={p:g} under {cfg.defence}' if cfg.defence else ''}; "
          f"{cfg.n_prompts} harmful prompts and {cfg.n_task} {cfg.task} rows per evaluation; writing to {out}")
    shipped = False
    if cfg.alignment == "shipped":
        align = next(s for s in exp.plan() if s.labels.get("stage") == "aligned"
                     and get_stage_kind(s.kind).role == "model")
        if shipped_weights_present():
            target = stage_path(out / "stages", align)
            if not (target / "DONE").exists():
                materialise_shipped_alignment(target)
            shipped = True
        else:  # the settings are the shipped ones (checked): training gives that stage
            logger.info(f"the shipped alignment's weights ({SHIPPED_ADAPTER}) are not in {SHIPPED_ALIGNMENT} "
                  f"(benchmarks/ship_alignment.py makes them): training it instead (~25 min on 2 cores)")
    return run_experiment(exp, out), judges, shipped
