"""``clinic curate``: score the alignment data with a selector and keep a core subset.

The stage splits the alignment source (default ``refusals``) into a small trusted validation set
and the candidates (seeded, disjoint), takes harmful QA pairs (default ``beavertails-harmful``,
which holds no evaluation prompt), runs the selector, keeps the top k candidates and writes a
run directory:

- ``subset.jsonl``: the kept rows, with the source's columns (``prompt``, ``response``, ...):
  ``clinic align --source RUN/subset.jsonl`` trains on it;
- ``scores.csv`` / ``scores.jsonl``: every candidate's source ``index``, ``score``, ``rank``
  (1 = best), ``selected``, plus the selector's own columns (loss, gradient norm, ...);
- ``validation.jsonl`` and ``data_indices.json``: the trusted validation rows, and every index;
- ``config.yaml`` (resolved settings, versions, seed), ``metrics.json`` (selector time, n, k),
  ``scores.png`` (score distribution, kept samples highlighted), and ``DONE``.
"""

from __future__ import annotations

import csv
import dataclasses
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ClinicError
from ..modeling.lora import LoraFields
from ..settings import package_versions
from ..curation.ranking import plot_scores, rank_scores
from .base import StageContext, StageKind, execute, register_stage


@dataclass
class CurateConfig(LoraFields):
    """Settings of the curation stage. The model settings (LoRA shape, prompt style, length)
    should match the alignment run that will use the subset: the gradients are those of its
    first step.

    Choices behind the defaults (docs/methods/pharmacist.md has the measurements):

    - 32 validation refusals and 32 harmful pairs: enough for a stable mean gradient, small
      next to the candidate pass (each costs about what a candidate costs);
    - ``sparse`` projection to 8192 dimensions: O(D) per sample, and on SmolLM2 its scores
      correlated 0.995 with exact ones (0.95 at 1024);
    - η = 1: on SmolLM2 the unrolled step lowers the validation loss by a few percent, a real but
      small move; α = 2 (normalised): a harmful step that clearly raises the validation loss,
      short enough that the first-order approximation is reasonable; γ = 1: both terms count
      equally; one round: the ranking of the exact one-step hypergradient (more rounds are the
      mirror-descent refinement, one extra candidate pass each).
    """

    model: str = field(default="smollm2-135m-instruct", metadata={
        "help": "model whose alignment the data is curated for: alias, path, hub id or run directory"})
    selector: str = field(default="pharmacist", metadata={"help": "selection method (see the list above)"})
    source: str = field(default="refusals", metadata={"aliases": ("data",),
        "help": "alignment data (harmful prompt -> refusal): a named QA dataset or a file"})
    columns: str | None = field(default=None, metadata={
        "help": "column mapping for a data file, e.g. prompt=question,response=answer"})
    n_candidates: int | None = field(default=None, metadata={
        "help": "candidates to score (seeded sample; default: every row not in the validation set)"})
    n_validation: int = field(default=32, metadata={
        "help": "trusted validation refusals split off the alignment data (never candidates)", "range": (1, None)})
    harmful_source: str = field(default="beavertails-harmful", metadata={"aliases": ("harmful_data",),
        "help": "harmful (prompt, harmful answer) pairs for the simulated attack (no evaluation prompts)"})
    n_harmful: int = field(default=32, metadata={"help": "harmful pairs in the simulated attack batch (the first N)",
                                                 "range": (1, None)})
    ratio: float = field(default=0.4, metadata={"help": "subset ratio r in (0, 1]: keep round(r * n) candidates"})
    k: int | None = field(default=None, metadata={"help": "subset size (overrides --ratio)", "range": (1, None)})
    seed: int = field(default=0, metadata={"help": "seed: data split, LoRA initialisation, projection, random baseline"})
    batch_size: int = field(default=8, metadata={"help": "batch size of the gradient passes", "range": (1, None)})
    max_length: int = field(default=160, metadata={"help": "truncate samples to this many tokens (as in alignment)"})
    prompt_style: str = field(default="chat", metadata={"help": "chat (tokenizer template) or alpaca, as in alignment"})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt for the chat style"})
    grad_layers: int = field(default=0, metadata={
        "help": "gradients over the LoRA adapters of the last N decoder layers only (0: all layers); the backward "
                "pass then stops at layer L-N, a cheaper approximation of the scores (docs/methods/pharmacist.md)"})
    projection: str = field(default="sparse", metadata={
        "help": "random projection of the per-sample gradients: sparse (CountSketch, O(D) per sample), "
                "rademacher or gaussian (dense, chunked; O(D*dim))"})
    projection_dim: int = field(default=8192, metadata={
        "help": "projected gradient dimension (0: exact gradients, tiny models only)"})
    inner_lr: float = field(default=1.0, metadata={
        "help": "pharmacist: eta, SGD step size of the unrolled inner (alignment) step"})
    attack_lr: float = field(default=2.0, metadata={
        "help": "pharmacist: step of the simulated harmful fine-tuning step (its L2 length when normalised)"})
    normalize_attack: bool = field(default=True, metadata={
        "help": "pharmacist: normalise the harmful gradient (step length = attack-lr, model-independent)"})
    gamma: float = field(default=1.0, metadata={
        "help": "pharmacist: weight of the robustness term (validation loss after the simulated attack)"})
    rounds: int = field(default=1, metadata={
        "help": "pharmacist: rounds of exponentiated-gradient updates of the sample weights"})
    weight_lr: float = field(default=1.0, metadata={
        "help": "pharmacist: step of the weight update (applied to standardised scores)"})
    scores_from: str | None = field(default=None, metadata={
        "help": "a finished curation run with the same selector and settings (only the ratio or k may "
                "differ): reuse its scores instead of running the selector again (a ratio sweep scores once)"})

    def __post_init__(self):
        from ..modeling.gradients import PROJECTIONS
        from ..values import check_fields

        check_fields(self, "curate setting ")  # types, choices and ranges (metadata); no NaN

        if not 0.0 < self.ratio <= 1.0:
            raise ClinicError(f"subset ratio r must be within (0, 1], got {self.ratio}")
        for name in ("max_length", "rounds"):
            if getattr(self, name) < 1:
                raise ClinicError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.n_candidates is not None and self.n_candidates < 1:
            raise ClinicError(f"--n-candidates must be at least 1, got {self.n_candidates}")
        if self.grad_layers < 0:
            raise ClinicError(f"--grad-layers must be >= 0 (0: all layers), got {self.grad_layers}")
        if self.projection not in PROJECTIONS:
            raise ClinicError(f"unknown projection {self.projection!r}; choose one of {', '.join(PROJECTIONS)}")
        if self.projection_dim < 0:
            raise ClinicError(f"--projection-dim must be >= 0 (0: no projection), got {self.projection_dim}")
        if self.inner_lr <= 0 or self.weight_lr <= 0:
            raise ClinicError("--inner-lr and --weight-lr must be positive")
        if self.attack_lr < 0 or self.gamma < 0:
            raise ClinicError("--attack-lr and --gamma must be non-negative")
        self.train_config()  # validates the prompt style

    def train_config(self):
        """The alignment settings the gradients are taken under (LoRA, prompt format, length)."""
        from ..modeling.training import train_config

        lora = {f.name: getattr(self, f.name) for f in dataclasses.fields(LoraFields)}  # every LoRA field
        return train_config(None, batch_size=self.batch_size, max_length=self.max_length, seed=self.seed,
                            prompt_style=self.prompt_style, system_prompt=self.system_prompt, **lora)

    def subset_size(self, n: int, keeps_all: bool = False) -> int:
        if keeps_all:
            return n
        if self.k is not None:
            if self.k > n:
                raise ClinicError(f"subset size k={self.k} exceeds the {n} candidates")
            return self.k
        return max(1, round(self.ratio * n))


def split_data(cfg: CurateConfig):
    """Validation and candidate rows of the alignment source, and the harmful pairs (seeded)."""
    from ..data.mixture import pick, take_qa
    from ..data.readers import parse_columns
    from ..data.sources import load_rows
    from ..curation.base import CurationData

    rows = load_rows(cfg.source, kind="qa", columns=parse_columns(cfg.columns))
    if cfg.n_validation >= len(rows):
        raise ClinicError(f"{cfg.source} has {len(rows)} rows: too few for {cfg.n_validation} validation samples "
                          "and at least one candidate")
    rng = random.Random(cfg.seed)
    val_idx = pick(len(rows), cfg.n_validation, rng, "random", f"validation ({cfg.source})")
    held = set(val_idx)
    rest = [i for i in range(len(rows)) if i not in held]
    n_cand = len(rest) if cfg.n_candidates is None else cfg.n_candidates
    cand_idx = [rest[j] for j in pick(len(rest), n_cand, rng, "random", f"candidate ({cfg.source}, after validation)")]
    harmful, harm_idx = take_qa(cfg.harmful_source, cfg.n_harmful, cfg.seed, "first")
    return CurationData([rows[i] for i in cand_idx], cand_idx, [rows[i] for i in val_idx], val_idx, harmful, harm_idx)


# settings that may differ between a curation run and one reusing its scores
_REUSE_MAY_DIFFER = ("ratio", "k", "scores_from")


def reused_scores(cfg: CurateConfig, candidate_index: list[int]):
    """The scores (and extra columns) of the finished run ``cfg.scores_from``, checked to come
    from the same selector, settings and candidates; its selector time goes into ``info``."""
    import yaml

    from ..rundir import jsonl_file

    source = Path(cfg.scores_from).expanduser()
    # an exported results folder keeps scores.jsonl gzip-compressed (benchmarks/export_run.py)
    if not (source / "DONE").exists() or jsonl_file(source, "scores.jsonl") is None:
        raise ClinicError(f"--scores-from {source}: not a finished curation run (no DONE or scores.jsonl)")
    try:
        return _reused(source, cfg, candidate_index)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, yaml.YAMLError) as exc:
        # a damaged or foreign run: its config.yaml, scores.jsonl or metrics.json is missing or not clinic's
        raise ClinicError(f"--scores-from {source}: cannot be read ({type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0]})") from None


def _reused(source: Path, cfg: CurateConfig, candidate_index: list[int]):
    import json

    import torch
    import yaml

    from ..curation.base import SelectorOutput
    from ..rundir import jsonl_file, read_jsonl

    config = yaml.safe_load((source / "config.yaml").read_text()) or {}
    renamed = {old: f.name for f in dataclasses.fields(CurateConfig) for old in f.metadata.get("aliases", ())}
    theirs, ours = {renamed.get(k, k): v for k, v in (config.get("curate") or {}).items()}, asdict(cfg)
    defaults = asdict(CurateConfig(model=cfg.model))  # a setting added since that run held its default there
    differing = [name for name in ours if name not in _REUSE_MAY_DIFFER
                 and theirs.get(name, defaults[name]) != ours[name]]
    if differing:
        name = differing[0]
        raise ClinicError(f"--scores-from {source} was scored with other settings: {name} = {theirs.get(name)!r}, "
                          f"here {ours[name]!r}")
    records = read_jsonl(jsonl_file(source, "scores.jsonl"))
    if [r["index"] for r in records] != list(candidate_index):
        raise ClinicError(f"--scores-from {source} scored other candidates than this run's")
    extra = [c for c in records[0] if c not in ("index", "score", "rank", "selected", "prompt")]
    metrics = json.loads((source / "metrics.json").read_text())
    return SelectorOutput(
        scores=torch.tensor([r["score"] for r in records], dtype=torch.float64),
        columns={c: [r[c] for r in records] for c in extra},
        info={**metrics.get("selector_info", {}), "scores_from": str(source.resolve()),
              "source_selector_seconds": metrics.get("selector_seconds")},
    )


def _inputs(ctx: StageContext) -> tuple:
    # never replace the model or the scores the curation reads
    cfg = ctx.config
    return tuple(Path(p) for p in (cfg.model, cfg.scores_from) if p and Path(p).exists())


def _prepare(ctx: StageContext) -> None:
    from ..modeling.chain import check_chain, load_chain, resolve_ref
    from ..curation.base import get_selector

    cfg = ctx.config
    spec = get_selector(cfg.selector)
    data = split_data(cfg)
    n = len(data.candidates)
    k = cfg.subset_size(n, spec.keeps_all)
    reused = reused_scores(cfg, data.candidate_index) if cfg.scores_from else None
    from ..modeling.device import placement

    device, dtype = placement(ctx.options)  # checked even when the selector loads no model
    model_loader, chain = ctx.options.get("model_loader"), None
    if spec.needs_model and model_loader is None and reused is None:
        chain = resolve_ref(cfg.model)
        check_chain(chain)
        model_loader = lambda: load_chain(chain, dtype=dtype, device=device)  # noqa: E731
    ctx.chain = chain
    ctx.state.update(spec=spec, data=data, n=n, k=k, reused=reused, model_loader=model_loader)


def _run(ctx: StageContext) -> None:
    from ..curation.base import CurationContext

    cfg, st, run = ctx.config, ctx.state, ctx.run
    spec, data, n, k, chain = st["spec"], st["data"], st["n"], st["k"], ctx.chain
    cur = CurationContext(cfg, data, st["model_loader"], ctx.options.get("embed_fn"), ctx.options.get("progress", True))
    start = time.perf_counter()
    try:
        result = st["reused"] or spec.fn(cur)
    finally:
        cur.close()
    seconds = time.perf_counter() - start
    scores = [float(s) for s in result.scores]
    if len(scores) != n:
        raise RuntimeError(f"selector {spec.name} returned {len(scores)} scores for {n} candidates")
    ranks = rank_scores(scores)
    selected = [r <= k for r in ranks]
    records = []
    for pos, (index, score, rank, keep) in enumerate(zip(data.candidate_index, scores, ranks, selected)):
        extra = {name: values[pos] for name, values in result.columns.items()}
        records.append({"index": index, "score": score, "rank": rank, "selected": keep, **extra})
    with (run.path / "scores.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    run.write_jsonl("scores.jsonl", [{**rec, "prompt": row["prompt"]} for rec, row in zip(records, data.candidates)])
    subset = sorted(((index, row) for index, row, keep in zip(data.candidate_index, data.candidates, selected)
                     if keep), key=lambda pair: pair[0])
    run.write_jsonl("subset.jsonl", [row for _, row in subset])
    run.write_jsonl("validation.jsonl", data.validation)
    run.write_json("data_indices.json", {
        "source": cfg.source, "candidates": data.candidate_index, "validation": data.validation_index,
        "selected": [index for index, _ in subset],
        "harmful": {"source": cfg.harmful_source, "indices": data.harmful_index}})
    run.write_yaml("config.yaml", {
        "stage": "curate", "selector": spec.name, "curate": asdict(cfg),
        "model": asdict(chain) if chain else cfg.model, "n_candidates": n, "k": k,
        "seed": cfg.seed, "versions": package_versions()})
    saved = 1 - k / n
    run.write_json("metrics.json", {
        "selector": spec.name, "selector_seconds": round(seconds, 3),
        **{name: round(value, 3) for name, value in cur.timings.items()},
        "n_candidates": n, "k": k, "ratio": round(k / n, 6), "n_validation": len(data.validation),
        "n_harmful": len(data.harmful),
        "estimated_alignment_steps_saved": round(saved, 6),
        "selector_info": result.info})
    plot_scores(scores, selected, run.path / "scores.png",
                f"{spec.name}: {k} of {n} candidates kept (ratio {k / n:.2f})")


def run_curate(cfg: CurateConfig, output: str | Path, overwrite: bool = False, *, model_loader=None,
               embed_fn=None, progress: bool = True, **execution) -> Path:
    """Run a selector on the alignment data and write the curation run directory.

    Everything the user gave is validated before anything is written. ``model_loader`` (a
    callable returning ``(model, tokenizer)``) and ``embed_fn`` (texts -> embeddings) replace
    the model named in ``cfg`` and the packaged sentence encoder (tests).
    """
    return execute("curate", cfg, output=output, overwrite=overwrite, model_loader=model_loader, embed_fn=embed_fn,
                   progress=progress, **execution)


def curate_config(block: dict) -> CurateConfig:
    """A :class:`CurateConfig` from an experiment file's ``curate`` block (plus the model and
    seed the runner adds): ``selector``, ``ratio``, ``k``, ``model``, ``seed`` and ``options``
    (any other :class:`CurateConfig` field, e.g. ``n_candidates``, ``gamma``)."""
    from ..curation.base import get_selector
    from ..values import parse_settings

    values = {key: block[key] for key in ("selector", "ratio", "k", "model", "seed") if block.get(key) is not None}
    options = dict(block.get("options") or {})
    cfg = parse_settings(CurateConfig, {**options, **values}, "curate options", item="curate option ")
    get_selector(cfg.selector)
    return cfg


def _from_plan(stage, parent_dir, model: str):
    return curate_config(stage.config), None


def _peer(config: dict, metrics: dict):
    cur = config.get("curate") or {}
    # a run that reused another's scores ran no selector (0 s): no pace for one that scores
    if metrics.get("selector_seconds") is None or cur.get("scores_from"):
        return None
    return ("curate", cur.get("selector"), cur.get("n_candidates")), metrics["selector_seconds"]


def _cost(stage, store: Path, pace: dict):
    import statistics

    options = stage.config.get("options") or {}
    if options.get("scores_from"):  # no selector runs: the data and the finished run's scores are read
        return {"seconds": 0.0, "basis": f"reuses the scores of {options['scores_from']}"}
    peers = pace.get(("curate", stage.config.get("selector"), options.get("n_candidates")))
    if not peers:
        return None
    return {"seconds": statistics.median(peers), "basis": f"{len(peers)} finished peer{'s' if len(peers) > 1 else ''}"}


def _rows(stage, store: Path) -> int | None:
    """The subset size of a curate stage: its metrics when finished, else from k or the ratio."""
    import json

    metrics = store / stage.dirname / "metrics.json"
    if (store / stage.dirname / "DONE").exists() and metrics.exists():
        return json.loads(metrics.read_text())["k"]
    cfg = stage.config
    k = cfg.get("k") or (cfg.get("options") or {}).get("k")
    n = (cfg.get("options") or {}).get("n_candidates")
    return k if k else (max(1, round(cfg["ratio"] * n)) if n and cfg.get("ratio") else None)


def summary_lines(metrics: dict) -> list[str]:
    """What ``clinic curate`` prints: the selector's cost and the (estimated) saving."""
    parts = [f"{name.removesuffix('_seconds').replace('_', ' ')} {metrics[name]:.1f} s"
             for name in ("model_load_seconds", "per_sample_gradient_seconds", "per_sample_loss_seconds", "embedding_seconds")
             if name in metrics]
    return [
        f"selector {metrics['selector']}: {metrics['selector_seconds']:.1f} s" + (f" ({', '.join(parts)})" if parts else ""),
        f"kept {metrics['k']} of {metrics['n_candidates']} candidates (ratio {metrics['ratio']:.2f})",
        f"alignment time saved (estimate): {100 * metrics['estimated_alignment_steps_saved']:.0f}% of the full-data "
        "alignment steps, i.e. 1 - k/n at equal epochs and batch size; not measured here "
        "(benchmarks/curation.py measures it)",
    ]


register_stage(StageKind("curate", CurateConfig, _run, "score the alignment data with a selector and keep a core subset",
                         role="subset", model="none", inputs=_inputs, prepare=_prepare, from_plan=_from_plan,
                         peer=_peer, cost=_cost, rows=_rows), order=0)
