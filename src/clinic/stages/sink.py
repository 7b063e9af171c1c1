"""Sink analysis of models and training runs: for one model, or every checkpoint of a
fine-tuning run, the sink divergence (:mod:`.divergence`) written as CSV + JSON + PNG figures
(:mod:`.plots`), with the count against the step and, when given, against the harmful score."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ClinicError
from ..sink.bootstrap import positive_heads_interval, save_per_sample
from ..sink.divergence import DEFAULT_HARMFUL, DEFAULT_HARMLESS, histogram, positive_head_count, sink_attention_per_sample
from ..sink.config import SinkConfig
from ..sink.plots import heatmap, histogram_plot, line_plot
from .base import StageContext, StageKind, execute, register_stage


@dataclass
class _Entry:
    label: str
    step: int | None
    divergence: torch.Tensor
    sink_harmful: torch.Tensor
    sink_harmless: torch.Tensor
    heads_ci95: list[float]  # bootstrap interval of the positive-head count (clinic.sink.bootstrap)
    per_sample: tuple[torch.Tensor, torch.Tensor]  # [N, L, H] harmful and harmless values: the bootstrap's input


def _checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else None


def _run_models(ref: str) -> list[tuple[str, int | None, object]]:
    """``(label, step, ModelChain)`` for a model name, or for every model of a run directory."""
    import yaml

    from ..modeling.chain import ModelChain, follow_adapters, resolve_ref
    from ..rundir import is_run_dir, read_json, read_run

    if not is_run_dir(ref):
        return [("model", None, resolve_ref(ref))]
    run = Path(ref)
    record = read_run(run)
    final = resolve_ref(str(run))
    config_path = run / "config.yaml"
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ClinicError(f"{config_path} cannot be read: {(str(exc).splitlines() or [''])[0]}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model", {}), dict):
        raise ClinicError(f"{config_path} is not a clinic run config")
    if record.get("stage") not in ("align", "finetune") or "model" not in config:
        return [("model", None, final)]
    try:
        start = ModelChain(**{k: config["model"][k] for k in ("base", "adapters", "prompt_format") if k in config["model"]})
    except TypeError:
        raise ClinicError(f"{config_path} names no start model (model.base missing)") from None
    start.adapters = follow_adapters(run, start.adapters, config_path)  # as run.json's: only finished runs' adapters
    steps_done = None
    metrics_path = run / "metrics.json"
    if metrics_path.exists():
        steps_done = read_json(metrics_path).get("steps")
    out = [("step-0", 0, start)]
    checkpoints = sorted((p for p in (run / "checkpoints").glob("checkpoint-*") if _checkpoint_step(p) is not None),
                         key=_checkpoint_step)
    for ckpt in checkpoints:
        step = _checkpoint_step(ckpt)
        if step == steps_done:
            continue  # the final model below
        if (ckpt / "adapter_config.json").exists():
            chain = ModelChain(start.base, list(start.adapters) + [str(ckpt)], final.prompt_format)
        elif (ckpt / "config.json").exists():
            chain = ModelChain(str(ckpt), [], final.prompt_format)
        else:
            continue
        out.append((f"step-{step}", step, chain))
    out.append(("final", steps_done, final))
    return out


def _load_chain(chain, dtype="float32", device: str | None = None):
    from ..modeling.models import load_model
    from ..modeling.chain import load_chain

    if not chain.adapters and Path(chain.base).is_dir() and not (Path(chain.base) / "tokenizer_config.json").exists():
        # a full fine-tuning checkpoint without a tokenizer: the run's final model has one
        model, _ = load_model(chain.base, dtype=dtype, device=device)
        return model, None
    return load_chain(chain, dtype=dtype, device=device)


def _read_scores(path: str | Path | None, final_step: int | None) -> dict[int, float]:
    """Harmful scores by step: ``{"<step>": score}``, ``{"steps": {...}}`` or an evaluation
    ``metrics.json`` (its first prompt set and judge, attached to the final step)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise ClinicError(f"harmful-score file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ClinicError(f"{path}: not valid JSON ({exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClinicError(f"harmful-score file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if isinstance(data, dict) and isinstance(data.get("harmful"), dict) and data["harmful"]:
        if final_step is None:
            raise ClinicError(f"{path} holds one harmful score, but the model has no step to attach it to")
        try:
            first_set = next(iter(data["harmful"].values()))
            return {int(final_step): float(next(iter(first_set.values()))["harmful_score"])}
        except (AttributeError, KeyError, StopIteration, TypeError, ValueError):
            raise ClinicError(f"{path}: an evaluation metrics.json without a harmful score") from None
    table = data.get("steps", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ClinicError(f"{path}: expected {{step: harmful score}} or an evaluation metrics.json")
    try:
        return {int(k): float(v) for k, v in table.items()}
    except (TypeError, ValueError):
        raise ClinicError(f"{path}: expected {{step: harmful score}} with numeric keys and values") from None


def _prepare(ctx: StageContext) -> None:
    from ..data.mixture import take_qa

    from ..modeling.device import placement

    cfg = ctx.config  # checked by SinkConfig itself
    ctx.state["placement"] = placement(ctx.options)
    models = _run_models(ctx.model)
    ctx.state.update(models=models, step_scores=_read_scores(cfg.scores, models[-1][1]),
                     harmful=take_qa(cfg.harmful_source, cfg.n, cfg.seed, cfg.selection)[0],
                     harmless=take_qa(cfg.harmless_source, cfg.n, cfg.seed, cfg.selection)[0])


def _run(ctx: StageContext) -> None:
    from ..settings import package_versions

    cfg, st, run = ctx.config, ctx.state, ctx.run
    models, step_scores = st["models"], st["step_scores"]
    n, batch_size, sink_index, max_length, mode, seed = (cfg.n, cfg.batch_size, cfg.sink_index, cfg.max_length,
                                                         cfg.mode, cfg.seed)
    model_ref = ctx.model
    entries: list[_Entry] = []
    tokenizer = None
    device, dtype = st["placement"]
    for label, step, chain in models:
        model, tok = _load_chain(chain, dtype, device)
        tokenizer = tok or tokenizer
        if tokenizer is None:
            _, tokenizer = _load_chain(models[-1][2])
        per_m = sink_attention_per_sample(model, tokenizer, st["harmful"], batch_size, sink_index, max_length, mode)
        per_r = sink_attention_per_sample(model, tokenizer, st["harmless"], batch_size, sink_index, max_length, mode)
        a_m, a_r = per_m.mean(dim=0), per_r.mean(dim=0)
        entries.append(_Entry(label, step, a_m - a_r, a_m, a_r, positive_heads_interval(per_m, per_r, seed=seed),
                              (per_m, per_r)))
        del model
    harmful_source, harmless_source, selection = cfg.harmful_source, cfg.harmless_source, cfg.selection

    multi = len(entries) > 1
    with (run.path / "divergence.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["label", "step", "layer", "head", "divergence", "sink_harmful", "sink_harmless"])
        for e in entries:
            L, H = e.divergence.shape
            for layer in range(L):
                for head in range(H):
                    writer.writerow([e.label, "" if e.step is None else e.step, layer, head,
                                     f"{e.divergence[layer, head].item():.8g}",
                                     f"{e.sink_harmful[layer, head].item():.8g}",
                                     f"{e.sink_harmless[layer, head].item():.8g}"])
    summary = {
        "model": str(model_ref),
        "settings": {"n": n, "batch_size": batch_size, "sink_index": sink_index, "sink_mode": mode,
                     "max_length": max_length, "harmful_source": harmful_source,
                     "harmless_source": harmless_source, "selection": selection, "seed": seed},
        "entries": [
            {"label": e.label, "step": e.step, "positive_heads": positive_head_count(e.divergence),
             "positive_heads_ci95": e.heads_ci95,
             "total_heads": int(e.divergence.numel()), "layers": int(e.divergence.shape[0]),
             "heads": int(e.divergence.shape[1]),
             "harmful_score": step_scores.get(e.step) if e.step is not None else None,
             "histogram": histogram(e.divergence),
             "divergence": [[round(float(x), 8) for x in row] for row in e.divergence.tolist()]}
            for e in entries
        ],
        "versions": package_versions(),
    }
    run.write_json("sink.json", summary)
    last = entries[-1]
    save_per_sample(run.path, *last.per_sample)  # for paired comparisons between models
    heatmap(last.divergence, run.path / "heatmap.png",
             f"sink divergence, {last.label}: {positive_head_count(last.divergence)}/{last.divergence.numel()} > 0")
    histogram_plot(last.divergence, run.path / "histogram.png", f"sink divergence ({last.label})")
    if multi:
        for e in entries:
            heatmap(e.divergence, run.path / f"heatmap_{e.label}.png",
                     f"{e.label}: {positive_head_count(e.divergence)}/{e.divergence.numel()} heads > 0")
        with (run.path / "counts.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["label", "step", "positive_heads", "total_heads", "harmful_score"])
            for e in entries:
                writer.writerow([e.label, e.step, positive_head_count(e.divergence), e.divergence.numel(),
                                 step_scores.get(e.step, "")])
        stepped = [e for e in entries if e.step is not None]
        line_plot([e.step for e in stepped], [positive_head_count(e.divergence) for e in stepped],
                   run.path / "count_vs_step.png", "training step", "positive sink heads during fine-tuning")
    scored = [e for e in entries if e.step is not None and e.step in step_scores]
    if scored:
        line_plot([step_scores[e.step] for e in scored], [positive_head_count(e.divergence) for e in scored],
                   run.path / "count_vs_harmful_score.png", "harmful score (%)",
                   "positive sink heads vs harmful score")


def run_sink_analysis(model_ref: str, out_dir: str | Path, n: int = 100, batch_size: int = 8, sink_index: int = 0,
                      harmful_source: str = DEFAULT_HARMFUL, harmless_source: str = DEFAULT_HARMLESS,
                      max_length: int = 512, mode: str = "fixed", scores: str | Path | None = None,
                      overwrite: bool = False, seed: int = 0, selection: str = "first", **execution) -> Path:
    """Sink divergence of a model, or of every checkpoint of a training run directory.

    Writes into ``out_dir``: ``divergence.csv`` (one row per model × layer × head),
    ``per_sample.safetensors`` (the last model's per-sample sink values, for the bootstrap of
    :mod:`clinic.sink.bootstrap`),
    ``sink.json`` (counts, histograms, the divergence matrices, settings), ``heatmap.png`` and
    ``histogram.png`` of the last model (``heatmap_<label>.png`` per model of a run), and for a
    run ``counts.csv`` + ``count_vs_step.png`` (+ ``count_vs_harmful_score.png`` with ``scores``).
    """
    cfg = SinkConfig(n=n, batch_size=batch_size, sink_index=sink_index, mode=mode, max_length=max_length,
                     harmful_source=harmful_source, harmless_source=harmless_source,
                     scores=None if scores is None else str(scores), seed=seed, selection=selection)
    return execute("sink", cfg, output=out_dir, model=str(model_ref), overwrite=overwrite, **execution)


def _from_plan(stage, parent_dir, model: str):
    return SinkConfig(**stage.config), str(parent_dir)


def _inputs(ctx: StageContext) -> tuple:
    return (Path(ctx.model),) if Path(ctx.model).exists() else ()  # never replace the model analysed


# model "none": the analysis resolves its model itself (a run directory means every checkpoint of it)
register_stage(StageKind("sink", SinkConfig, _run, "per-head sink divergence (harmful vs harmless) of a model",
                         role="analysis", model="none", inputs=_inputs, prepare=_prepare, from_plan=_from_plan,
                         metrics_file="sink.json"),
               order=5)
