"""``clinic repair``: change a LoRA fine-tuned model after the fact, so that it is safe again.

The stage reads a finished fine-tuning run (or a repaired one) whose model is ``base + adapters``
with the fine-tuning adapter last, loads that adapter trainable on top of the rest of the chain
merged, lets the repair method change the adapter's weights, and writes a run directory:

- ``adapter/``: the repaired adapter (safetensors), replacing the fine-tuning adapter in the chain;
- ``run.json``: the model chain (base, the earlier adapters, this adapter) and prompt format, so
  that ``clinic evaluate --model RUN`` (and any later stage) loads the repaired model; and
  ``repaired``, the fine-tuned run it came from;
- ``config.yaml`` (method options, settings, the input chain, references, versions, seed),
  ``metrics.json`` (what the method measured, its time and memory), ``data_indices.json`` and
  ``DONE``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ClinicError
from ..repair.base import RepairConfig, get_repair, repair_config
from ..values import hashed
from .base import StageContext, StageKind, execute, register_stage

REPAIRABLE_STAGES = ("finetune", "repair")


def _fine_tuned(ref: str):
    """The chain, record and config.yaml of a finished LoRA fine-tuning (or repair) run."""
    import yaml

    from ..modeling.chain import resolve_ref
    from ..rundir import is_run_dir, read_run

    path = Path(ref).expanduser()
    if not is_run_dir(path):
        resolve_ref(ref)  # the precise error for an incomplete run or a missing model
        raise ClinicError(f"--model {ref}: repair needs a finished LoRA fine-tuning run directory (clinic finetune), "
                          f"not a model")
    record = read_run(path)
    if record.get("stage") not in REPAIRABLE_STAGES:
        raise ClinicError(f"--model {path} is the run of the {record.get('stage')} stage; repair needs a fine-tuning "
                          f"(or repair) run")
    chain = resolve_ref(ref)
    if not chain.adapters or Path(chain.adapters[-1]).parent.resolve() != path.resolve():
        raise ClinicError(f"--model {path} was fully fine-tuned (no LoRA adapter); the repair methods change a LoRA "
                          f"fine-tuning adapter")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    return chain, record, config if isinstance(config, dict) else {}


def references(chain, base_model: str | None, aligned_model: str | None) -> dict:
    """The base and aligned models SafeLoRA compares: the ones named; else the fine-tuned chain
    without its last adapter (aligned) and, for the base (before the alignment), that chain
    without the alignment: its last adapter, or, for a fully fine-tuned alignment, the model the
    alignment run started from (its config.yaml)."""
    from ..modeling.chain import ModelChain, check_chain, resolve_ref

    aligned = resolve_ref(aligned_model) if aligned_model else ModelChain(chain.base, chain.adapters[:-1])
    if base_model:
        base = resolve_ref(base_model)
    elif aligned_model is None and len(chain.adapters) >= 2:
        base = ModelChain(chain.base, chain.adapters[:-2])
    else:
        base = _alignment_input(aligned) if aligned_model is None else None
    if base is None:
        raise ClinicError("the fine-tuned model's chain holds no alignment run clinic can follow back to its base "
                          "model: name the models with --base-model and --aligned-model")
    for ref in (base, aligned):
        check_chain(ref)
    return {"base": base, "aligned": aligned}


def _alignment_input(aligned):
    """The model a fully fine-tuned alignment run (whose ``model/`` is ``aligned``'s base) was
    trained from, as its config.yaml records it; ``None`` when ``aligned`` is no such run."""
    import yaml

    from ..modeling.chain import ModelChain, follow_adapters
    from ..rundir import is_run_dir, read_run

    run = Path(aligned.base).parent
    if aligned.adapters or Path(aligned.base).name != "model" or not is_run_dir(run):
        return None
    if read_run(run).get("stage") != "align":
        return None
    try:
        recorded = (yaml.safe_load((run / "config.yaml").read_text()) or {})["model"]
        base, adapters = str(recorded["base"]), [str(a) for a in recorded["adapters"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return ModelChain(base, follow_adapters(run, adapters, run / "config.yaml"))


@dataclass
class RepairStageConfig:
    """The settings of one repair stage: the method, its options and the shared settings."""

    method: str
    options: dict = field(default_factory=dict)
    settings: RepairConfig = field(default_factory=RepairConfig)


def _inputs(ctx: StageContext) -> tuple:
    """The reference models SafeLoRA compares are read too: checked here, before the output is."""
    from ..modeling.chain import chain_inputs

    s = ctx.config
    spec = get_repair(s.method)
    cfg = repair_config(spec, **(s.options or {}))
    chain, record, run_config = _fine_tuned(ctx.model)
    refs = references(chain, cfg.base_model, cfg.aligned_model) if hasattr(cfg, "aligned_model") else {}
    ctx.state.update(spec=spec, cfg=cfg, record=record, run_config=run_config, refs=refs)
    return tuple(p for ref in refs.values() for p in chain_inputs(ref.base, ref))


def _prepare(ctx: StageContext) -> None:
    from ..data.formatting import PromptFormat

    st, settings = ctx.state, ctx.config.settings
    st["fmt"] = PromptFormat(**(st["record"].get("prompt_format") or ctx.chain.prompt_format or {"style": "chat"}))
    if settings.max_length is None:  # the length the fine-tuning saw
        trained = (st["run_config"].get("train") or {}).get("max_length")
        settings = dataclasses.replace(settings, max_length=trained if isinstance(trained, int) and trained > 0 else 256)
    st["settings"] = settings


def _run(ctx: StageContext) -> None:
    import torch

    from ..modeling.chain import ModelChain
    from ..modeling.device import peak_memory_mb
    from ..settings import package_versions
    from ..repair.base import RepairContext

    st, chain, run = ctx.state, ctx.chain, ctx.run
    spec, cfg, settings, fmt, refs = st["spec"], st["cfg"], st["settings"], st["fmt"], st["refs"]
    from ..modeling.device import placement

    rep = RepairContext(chain, fmt, settings, st["run_config"], refs, ctx.options.get("progress", True),
                        placement=placement(ctx.options))
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    try:
        info = spec.fn(rep, cfg)
        seconds = time.perf_counter() - start
        rep.model.save_pretrained(run.path / "adapter", safe_serialization=True)
    finally:
        rep.close()
    repaired = str(Path(ctx.model).resolve())
    new_chain = ModelChain(chain.base, chain.adapters[:-1] + ["adapter"], asdict(fmt))
    run.write_yaml("config.yaml", {
        "stage": "repair", "method": spec.name, "model": asdict(chain), "repaired": repaired,
        "method_options": asdict(cfg), "settings": asdict(settings),
        "references": {name: asdict(ref) for name, ref in refs.items()}, "seed": settings.seed,
        "versions": package_versions()})
    run.write_json("metrics.json", {"method": spec.name, "repair_seconds": round(seconds, 3),
                                    "peak_memory_mb": round(peak_memory_mb(), 1), **info})
    run.write_json("run.json", {"stage": "repair", "method": spec.name, "model_chain": asdict(new_chain),
                                "prompt_format": asdict(fmt), "repaired": repaired})


def run_repair(model: str, method: str, output: str | Path, options: dict | None = None,
               settings: RepairConfig | None = None, overwrite: bool = False, progress: bool = True,
               **execution) -> Path:
    """Repair the fine-tuned run ``model`` with ``method``; returns the finished run directory.
    Everything the user gave is checked before anything is written."""
    stage = RepairStageConfig(method, dict(options or {}), settings or RepairConfig())
    return execute("repair", stage, output=output, model=model, overwrite=overwrite, progress=progress, **execution)


def summary_line(metrics: dict) -> str:
    """What ``clinic repair`` prints about the method's effect."""
    method = metrics["method"]
    if "projected" in metrics:
        what = f"{metrics['projected']} of {metrics['layers']} LoRA layers projected"
    elif "weights_zeroed" in metrics:
        what = f"{metrics['weights_zeroed']} of {metrics['weights_scored']} adapter weights zeroed"
    else:
        what = f"perturbation of norm {metrics['perturbation_norm']:.3g} added"
    loss = (f"; harmful loss {metrics['harmful_loss_before']:.3f} -> {metrics['harmful_loss_after']:.3f}"
            if "harmful_loss_after" in metrics else "")
    return f"{method}: {what}{loss} ({metrics['repair_seconds']:.1f} s)"


# --------------------------------------------------------------------------------------------
# the experiment runner's entry points


def repair_stage_config(entry_name: str, options: dict, block: dict, seed: int) -> dict:
    """The resolved, hashable config of one repair stage of an experiment's ``repair`` block."""
    spec = get_repair(entry_name)
    given = {f.name: block[f.name] for f in dataclasses.fields(RepairConfig) if f.name in block and f.name != "seed"}
    settings = RepairConfig(seed=seed, **given)  # the block's keys are these fields (clinic.experiment.spec)
    return {"method": spec.name, "options": hashed(repair_config(spec, **options)), "settings": hashed(settings)}


def _from_plan(stage, parent_dir, model: str):
    cfg = stage.config
    return RepairStageConfig(cfg["method"], cfg["options"], RepairConfig(**cfg["settings"])), str(parent_dir)


def _peer(config: dict, metrics: dict):
    if metrics.get("repair_seconds") is None:
        return None
    return ("repair", config.get("method")), metrics["repair_seconds"]


def _cost(stage, store: Path, pace: dict):
    import statistics

    peers = pace.get(("repair", stage.config.get("method")))
    if not peers:
        return None
    return {"seconds": statistics.median(peers), "basis": f"{len(peers)} finished peer{'s' if len(peers) > 1 else ''}"}


register_stage(StageKind("repair", RepairStageConfig, _run, "repair a LoRA fine-tuned model after fine-tuning",
                         role="model", inputs=_inputs, prepare=_prepare, from_plan=_from_plan, peer=_peer,
                         cost=_cost, seconds="repair_seconds"), order=4)
