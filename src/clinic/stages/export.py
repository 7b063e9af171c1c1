"""The export stage (``clinic export RUN --output DIR``): a finished run's whole model chain merged
into one ordinary transformers folder that ``AutoModelForCausalLM.from_pretrained``, vLLM
(``vllm serve DIR``) and lm-evaluation-harness (``--model hf --model_args pretrained=DIR``) load
as they are: ``model.safetensors`` (sharded above 5 GB), ``config.json``,
``generation_config.json``, the tokenizer with its chat template, and ``README.md``, a model card
with the run's provenance (every stage of the chain: method, settings, data, seed, and the
evaluations of the model that clinic knows of), beside ``clinic_provenance.json`` (the same,
machine-readable). The folder also holds clinic's ``clinic.json`` and ``DONE`` markers (written
atomically like every stage; other tools ignore them)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ClinicError
from ..modeling.chain import load_chain
from ..settings import package_versions
from .base import StageContext, StageKind, execute, register_stage

EXPORT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ExportConfig:
    dtype: str = field(default="float32", metadata={
        "help": "dtype of the written weights (float32: exactly the chain clinic evaluates; bfloat16: half the size)",
        "choices": EXPORT_DTYPES})
    max_shard_size: str = field(default="5GB", metadata={"help": "largest safetensors shard"})

    def __post_init__(self):
        from ..values import check_fields

        check_fields(self, "export setting ")


def _stage_records(chain) -> list[dict]:
    """What clinic recorded of each run of the chain (the run an adapter came from, in order)."""
    import yaml

    records = []
    for adapter in chain.adapters:
        run = Path(adapter).parent
        try:
            config = yaml.safe_load((run / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        metrics = {}
        if (run / "metrics.json").exists():
            metrics = json.loads((run / "metrics.json").read_text())
        keep = ("stage", "method", "method_options", "train", "data", "settings", "seed")
        records.append({"run": str(run), **{k: config[k] for k in keep if k in config},
                        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}})
    return records


def _evaluations(model: str) -> list[dict]:
    """Evaluations of the run ``model`` that sit beside it in its store (an experiment's stages),
    each with its harmful scores and task accuracies."""
    run = Path(model)
    found = []
    if not run.is_dir():
        return found
    for folder in sorted(run.parent.glob("evaluate-*")):
        try:
            record = json.loads((folder / "run.json").read_text())
            chain = record["model_chain"]
        except (OSError, ValueError, KeyError):
            continue
        if Path(chain.get("base", "")).name and chain.get("adapters") and Path(chain["adapters"][-1]).parent.resolve() \
                == run.resolve() and (folder / "DONE").exists():
            found.append({"run": folder.name, "metrics": json.loads((folder / "metrics.json").read_text())})
    return found


def model_card(name: str, chain, records: list[dict], evaluations: list[dict], fmt: dict | None, dtype: str) -> str:
    lines = [f"# {name}", "", f"Exported by clinic {package_versions().get('clinic', '?')} on "
             f"{time.strftime('%Y-%m-%d')}: the base model with every adapter of the chain merged, in {dtype}.", "",
             "## Load it", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'model = AutoModelForCausalLM.from_pretrained("{name}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{name}")', "```", "",
             f"or `vllm serve {name}`, or lm-evaluation-harness with `--model hf --model_args pretrained={name}`.", "",
             "## Prompt format", ""]
    style = (fmt or {}).get("style", "chat")
    lines += [f"Trained with the `{style}` format" + (" (the tokenizer's chat template, included here)" if style == "chat"
              else " (Alpaca: `### Instruction:` / `### Response:`)")
              + (f", system prompt {fmt['system_prompt']!r}" if (fmt or {}).get("system_prompt") else ", no system prompt")
              + ": prompt it the same way.", "", "## Provenance", "", f"- base: `{chain.base}`"]
    for i, r in enumerate(records, 1):
        train = r.get("train") or {}
        lines.append(f"- stage {i}: **{r.get('stage', '?')}** with `{r.get('method', '?')}`"
                     + (f" (lr {train.get('lr')}, {train.get('epochs')} epoch(s), batch {train.get('batch_size')}, "
                        f"LoRA r {train.get('lora_r')}, seed {r.get('seed')})" if train else "")
                     + f", run `{Path(r['run']).name}`")
    if evaluations:
        lines += ["", "## Evaluations clinic ran on this model", "",
                  "| evaluation | measure | score % [95 % CI] | n |", "|---|---|---|---|"]
        for e in evaluations:
            for set_name, judges in e["metrics"].get("harmful", {}).items():
                for judge, m in judges.items():
                    lines.append(f"| {e['run']} | harmful score [{set_name}, {judge}] | {m['harmful_score']:.1f} "
                                 f"[{m['ci95'][0]:.1f}, {m['ci95'][1]:.1f}] | {m['n']} |")
            for task, m in e["metrics"].get("tasks", {}).items():
                lines.append(f"| {e['run']} | accuracy [{task}] | {m['accuracy']:.1f} [{m['ci95'][0]:.1f}, "
                             f"{m['ci95'][1]:.1f}] | {m['n']} |")
    lines += ["", "`clinic_provenance.json` holds every setting of every stage.", ""]
    return "\n".join(lines)


def _prepare(ctx: StageContext) -> None:
    if not ctx.chain.adapters and not Path(ctx.model).is_dir():
        raise ClinicError(f"{ctx.model} is a model without a clinic run or adapter: there is nothing to merge; "
                          f"use it as it is")


def _run(ctx: StageContext) -> None:
    import torch

    cfg, chain, run = ctx.config, ctx.chain, ctx.run
    model, tok = load_chain(chain, dtype=getattr(torch, cfg.dtype))
    model.save_pretrained(run.path, safe_serialization=True, max_shard_size=cfg.max_shard_size)
    tok.save_pretrained(run.path)
    records, evaluations = _stage_records(chain), _evaluations(ctx.model)
    (run.path / "README.md").write_text(model_card(ctx.output.name, chain, records, evaluations, chain.prompt_format,
                                                   cfg.dtype))
    run.write_json("clinic_provenance.json", {"source": str(Path(ctx.model).resolve()), "chain": asdict(chain),
                                              "stages": records, "evaluations": evaluations,
                                              "export": asdict(cfg), "versions": package_versions()})


def run_export(model: str, output: str | Path, cfg: ExportConfig | None = None, overwrite: bool = False) -> Path:
    """The chain of ``model`` (a finished run, or a PEFT adapter folder) merged into ``output``."""
    return execute("export", cfg or ExportConfig(), output=output, model=model, overwrite=overwrite)


register_stage(StageKind("export", ExportConfig, _run, "a run's model chain merged into one transformers folder",
                         role="export", prepare=_prepare,
                         from_plan=lambda stage, parent, model: (ExportConfig(**stage.config), str(parent))), order=6)
