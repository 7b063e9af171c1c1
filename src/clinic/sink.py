"""Sink-divergence analysis: which attention heads look more at the sink on harmful text.

For every layer ``l`` and query head ``h``::

    d_{l,h} = mean over harmful samples of a_{l,h}(x)  −  mean over harmless samples of a_{l,h}(x)

with ``a`` the exact sink attention of :mod:`clinic.attention` (the sink is the first token of
each sample + ``sink_index``; queries are the real tokens after it). Samples are formatted as the
Surgery reference formats its probes: the chat template with ``[user: prompt, assistant:
response]`` and **no system message**, truncated to ``max_length`` tokens; a tokenizer without a
chat template gets the Alpaca prompt + response + EOS. Batches are right-padded; padding never
enters a mean, so batching does not change the result.

- :func:`sink_divergence` → ``[L, H]`` tensor; :func:`positive_head_count` counts ``d > 0``;
- :func:`run_sink_analysis` → a directory with CSV + JSON + PNG figures, for one model or for
  every checkpoint of a fine-tuning run (count vs step, and vs harmful score when given);
- :class:`SinkCountCallback` records the positive-head count every k training steps.

The `clinic sink` command is :mod:`clinic.cli.sink`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from .attention import SINK_MODES, sink_attention_values
from .data.formatting import alpaca_prompt, user_text
from .errors import ClinicError
from .tasks import Sample

DEFAULT_HARMFUL = "beavertails-harmful"
DEFAULT_HARMLESS = "beavertails-harmless"


# --------------------------------------------------------------------------------------------
# probe formatting


def probe_ids(tokenizer, sample: Sample, max_length: int = 512, double_bos: bool = False) -> list[int]:
    """Token ids of one probe: ``[user: prompt, assistant: response]``, no system message.

    ``double_bos=True`` reproduces the reference's tokenization of the templated text *with*
    the tokenizer's special tokens (a second BOS on Llama 3).
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "user", "content": user_text(sample.instruction, sample.input)},
            {"role": "assistant", "content": sample.output},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=double_bos)["input_ids"]
    else:
        text = alpaca_prompt(sample.instruction, sample.input) + sample.output + (tokenizer.eos_token or "")
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return list(ids[:max_length])


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right", device=None):
    """``(input_ids, attention_mask)`` of a list of id lists, padded on ``side``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        n = len(seq)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, sl] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return pad


def _device(model) -> torch.device:
    return next(model.parameters()).device


# --------------------------------------------------------------------------------------------
# divergence


def sink_attention_means(model, tokenizer, samples: Sequence[Sample], batch_size: int = 8, sink_index: int = 0,
                         max_length: int = 512, mode: str = "fixed") -> torch.Tensor:
    """``[L, H]``: per-head sink attention averaged over ``samples`` (each sample weighs the same)."""
    if not samples:
        raise ClinicError("sink analysis needs at least one sample of each kind")
    if batch_size < 1:
        raise ClinicError(f"batch size must be at least 1, got {batch_size}")
    # Batches of similar lengths waste less on padding; the mean does not depend on the order.
    seqs = sorted((probe_ids(tokenizer, s, max_length) for s in samples), key=len)
    total = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(seqs), batch_size):
                ids, mask = pad_batch(seqs[start : start + batch_size], _pad_id(tokenizer), device=_device(model))
                values = sink_attention_values(model, ids, mask, sink_index=sink_index, mode=mode)  # [L, B, H]
                part = values.float().sum(dim=1)
                total = part if total is None else total + part
    except ValueError as exc:  # e.g. a sink index past a sample's end
        raise ClinicError(str(exc)) from None
    finally:
        model.train(was_training)
    return (total / len(seqs)).cpu()


def sink_divergence(model, tokenizer, harmful: Sequence[Sample], harmless: Sequence[Sample], batch_size: int = 8,
                    sink_index: int = 0, max_length: int = 512, mode: str = "fixed") -> torch.Tensor:
    """``[L, H]`` sink divergence: mean sink attention on ``harmful`` minus on ``harmless``."""
    a_m = sink_attention_means(model, tokenizer, harmful, batch_size, sink_index, max_length, mode)
    a_r = sink_attention_means(model, tokenizer, harmless, batch_size, sink_index, max_length, mode)
    return a_m - a_r


def positive_head_count(divergence: torch.Tensor) -> int:
    """Number of heads with strictly positive sink divergence."""
    return int((divergence > 0).sum().item())


def histogram(divergence: torch.Tensor, bins: int = 40) -> dict:
    """A histogram of the divergences, symmetric around 0 (so the sign split is a bin edge)."""
    values = divergence.flatten().double()
    bound = float(values.abs().max().item()) or 1e-6
    counts = torch.histc(values, bins=bins, min=-bound, max=bound)
    edges = torch.linspace(-bound, bound, bins + 1)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


# --------------------------------------------------------------------------------------------
# the callback


class SinkCountCallback(TrainerCallback):
    """Record the positive-sink-head count every ``every`` optimizer steps (and at step 0).

    The probe samples are ``harmful`` / ``harmless``, or, when not given, the first ``n`` rows of
    ``harmful_source`` / ``harmless_source`` (loaded when training starts). Each record
    ``{"step", "sink_positive_heads", "sink_total_heads"}`` is appended to the trainer's
    ``state.log_history`` (so it lands in ``train_log.jsonl``), to ``self.records``, and, when
    ``path`` is given, as one line of that JSONL file.
    """

    def __init__(self, harmful: Sequence[Sample] | None = None, harmless: Sequence[Sample] | None = None,
                 every: int = 50, n: int = 32, harmful_source: str = DEFAULT_HARMFUL,
                 harmless_source: str = DEFAULT_HARMLESS, tokenizer=None, path: str | Path | None = None,
                 batch_size: int = 8, sink_index: int = 0, max_length: int = 512, at_start: bool = True):
        if every < 1:
            raise ClinicError(f"the sink-count interval must be at least 1 step, got {every}")
        if n < 1:
            raise ClinicError(f"the sink-count callback needs at least 1 sample of each kind, got {n}")
        self.harmful = list(harmful) if harmful is not None else None
        self.harmless = list(harmless) if harmless is not None else None
        self.n, self.harmful_source, self.harmless_source = n, harmful_source, harmless_source
        self.every, self.tokenizer, self.path = every, tokenizer, Path(path) if path else None
        self.batch_size, self.sink_index, self.max_length, self.at_start = batch_size, sink_index, max_length, at_start
        self.records: list[dict] = []

    def _samples(self) -> tuple[list[Sample], list[Sample]]:
        from .data.mixture import take_qa

        if self.harmful is None:
            self.harmful = take_qa(self.harmful_source, self.n)[0]
        if self.harmless is None:
            self.harmless = take_qa(self.harmless_source, self.n)[0]
        return self.harmful, self.harmless

    def _record(self, state, model, tokenizer) -> None:
        tokenizer = self.tokenizer or tokenizer
        if tokenizer is None or model is None:
            return
        harmful, harmless = self._samples()
        d = sink_divergence(model, tokenizer, harmful, harmless, self.batch_size, self.sink_index, self.max_length)
        row = {"step": int(state.global_step), "sink_positive_heads": positive_head_count(d),
               "sink_total_heads": int(d.numel())}
        self.records.append(row)
        state.log_history.append(dict(row))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    @staticmethod
    def _tok(kwargs):
        return kwargs.get("processing_class") or kwargs.get("tokenizer")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.at_start and state.global_step == 0:
            self._record(state, model, self._tok(kwargs))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0 and state.global_step % self.every == 0:
            self._record(state, model, self._tok(kwargs))


# --------------------------------------------------------------------------------------------
# analysis of models and runs


@dataclass
class _Entry:
    label: str
    step: int | None
    divergence: torch.Tensor
    sink_harmful: torch.Tensor
    sink_harmless: torch.Tensor


def _checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else None


def _run_models(ref: str) -> list[tuple[str, int | None, object]]:
    """``(label, step, ModelChain)`` for a model name, or for every model of a run directory."""
    import yaml

    from .pipeline import ModelChain, follow_adapters, resolve_ref
    from .rundir import is_run_dir, read_json, read_run

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


def _load_chain(chain):
    from .models import load_model
    from .pipeline import load_chain

    if not chain.adapters and Path(chain.base).is_dir() and not (Path(chain.base) / "tokenizer_config.json").exists():
        # a full fine-tuning checkpoint without a tokenizer: the run's final model has one
        model, _ = load_model(chain.base)
        return model, None
    return load_chain(chain)


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


def _heatmap(divergence: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    d = divergence.numpy()
    bound = float(abs(d).max()) or 1e-6
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * d.shape[1] + 2), max(3, 0.25 * d.shape[0] + 1.5)))
    image = ax.imshow(d, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound),
                      interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="sink divergence (harmful − harmless)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _histogram_plot(divergence: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = histogram(divergence)
    edges, counts = hist["edges"], hist["counts"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colours = ["tab:red" if (a + b) / 2 > 0 else "tab:blue" for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", color=colours)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("sink divergence")
    ax.set_ylabel("heads")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _line_plot(xs, ys, path: Path, xlabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("heads with positive sink divergence")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_sink_analysis(model_ref: str, out_dir: str | Path, n: int = 100, batch_size: int = 8, sink_index: int = 0,
                      harmful_source: str = DEFAULT_HARMFUL, harmless_source: str = DEFAULT_HARMLESS,
                      max_length: int = 512, mode: str = "fixed", scores: str | Path | None = None,
                      overwrite: bool = False, seed: int = 0, selection: str = "first") -> Path:
    """Sink divergence of a model, or of every checkpoint of a training run directory.

    Writes into ``out_dir``: ``divergence.csv`` (one row per model × layer × head),
    ``sink.json`` (counts, histograms, the divergence matrices, settings), ``heatmap.png`` and
    ``histogram.png`` of the last model (``heatmap_<label>.png`` per model of a run), and for a
    run ``counts.csv`` + ``count_vs_step.png`` (+ ``count_vs_harmful_score.png`` with ``scores``).
    """
    from .data.mixture import take_qa
    from .rundir import RunDir, check_output_dir, package_versions

    if n < 1:
        raise ClinicError(f"--n must be at least 1, got {n}")
    if batch_size < 1:
        raise ClinicError(f"--batch-size must be at least 1, got {batch_size}")
    if max_length < 2:
        raise ClinicError(f"--max-length must be at least 2, got {max_length}")
    if sink_index < 0:
        raise ClinicError(f"--sink-index must be non-negative, got {sink_index}")
    if mode not in SINK_MODES:
        raise ClinicError(f"unknown sink mode {mode!r}; choose one of {', '.join(SINK_MODES)}")
    inputs = (Path(model_ref),) if Path(model_ref).exists() else ()  # never replace the model analysed
    check_output_dir(out_dir, overwrite, inputs)
    models = _run_models(model_ref)
    final_step = models[-1][1]
    step_scores = _read_scores(scores, final_step)
    harmful, _ = take_qa(harmful_source, n, seed, selection)
    harmless, _ = take_qa(harmless_source, n, seed, selection)

    entries: list[_Entry] = []
    tokenizer = None
    for label, step, chain in models:
        model, tok = _load_chain(chain)
        tokenizer = tok or tokenizer
        if tokenizer is None:
            _, tokenizer = _load_chain(models[-1][2])
        a_m = sink_attention_means(model, tokenizer, harmful, batch_size, sink_index, max_length, mode)
        a_r = sink_attention_means(model, tokenizer, harmless, batch_size, sink_index, max_length, mode)
        entries.append(_Entry(label, step, a_m - a_r, a_m, a_r))
        del model

    multi = len(entries) > 1
    with RunDir(out_dir, overwrite, inputs) as run:
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
        _heatmap(last.divergence, run.path / "heatmap.png",
                 f"sink divergence, {last.label}: {positive_head_count(last.divergence)}/{last.divergence.numel()} > 0")
        _histogram_plot(last.divergence, run.path / "histogram.png", f"sink divergence ({last.label})")
        if multi:
            for e in entries:
                _heatmap(e.divergence, run.path / f"heatmap_{e.label}.png",
                         f"{e.label}: {positive_head_count(e.divergence)}/{e.divergence.numel()} heads > 0")
            with (run.path / "counts.csv").open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["label", "step", "positive_heads", "total_heads", "harmful_score"])
                for e in entries:
                    writer.writerow([e.label, e.step, positive_head_count(e.divergence), e.divergence.numel(),
                                     step_scores.get(e.step, "")])
            stepped = [e for e in entries if e.step is not None]
            _line_plot([e.step for e in stepped], [positive_head_count(e.divergence) for e in stepped],
                       run.path / "count_vs_step.png", "training step", "positive sink heads during fine-tuning")
        scored = [e for e in entries if e.step is not None and e.step in step_scores]
        if scored:
            _line_plot([step_scores[e.step] for e in scored], [positive_head_count(e.divergence) for e in scored],
                       run.path / "count_vs_harmful_score.png", "harmful score (%)",
                       "positive sink heads vs harmful score")
    return run.final


__all__ = [
    "SinkCountCallback",
    "histogram",
    "pad_batch",
    "positive_head_count",
    "probe_ids",
    "run_sink_analysis",
    "sink_attention_means",
    "sink_divergence",
]
