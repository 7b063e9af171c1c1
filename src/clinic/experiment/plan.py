"""The expansion of an experiment into stages: each stage's resolved config, its parent, its
hash (which names its folder in the store) and the labels tables use."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field

from .attacks import AttackSearch, attack_settings, attacks, fixed_point, point_attack
from ..errors import ClinicError
from ..values import coerce, hashed, parse_settings
from .blocks import AlignBlock, CurateBlock, FinetuneBlock, default
from .entries import MethodEntry, as_list, integer

EVAL_EXTRA_KEYS = {"base", "aligned"}  # evaluate keys that are no EvalConfig field: which models to evaluate too

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class Stage:
    kind: str  # curate | align | finetune | evaluate | sink
    slug: str  # readable part of the directory name
    config: dict  # everything that determines the result (JSON-able)
    parent: Stage | None = None
    labels: dict = field(default_factory=dict)  # for tables: model, align, finetune, task, p, seed

    @property
    def key(self) -> dict:
        return {"kind": self.kind, "config": self.config, "parent": self.parent.hash if self.parent else None}

    @property
    def hash(self) -> str:
        return _digest(self.key)

    @property
    def dirname(self) -> str:
        return f"{self.kind}-{self.slug}-{self.hash}"


def _train_config(block: dict, seed: int, default_preset: str) -> dict:
    from ..modeling.training import train_config

    overrides = dict(block.get("train") or {})
    overrides["seed"] = seed
    return hashed(train_config(block.get("preset", default_preset), **overrides))


def _with_entry_train(block: dict, entry: MethodEntry) -> dict:
    """The block as one method entry sees it: its ``train:`` overrides over the block's (issue 36:
    a search trial may train longer); the block itself when the entry has none."""
    if not entry.train:
        return block
    return {**block, "train": {**(block.get("train") or {}), **dict(entry.train)}}


def _method_options(entry: MethodEntry, stage: str) -> dict:
    from ..methods.registry import get_method, method_config

    spec = get_method(entry.name, stage)
    return hashed(method_config(spec, **dict(entry.options)))


def _fmt_p(p: float) -> str:
    return f"{p:g}"


def expand(exp) -> list[Stage]:
    """The stages of the experiment ``exp`` (a :class:`~.spec.Experiment`), each once, parents first."""
    from ..data.mixture import check_mixture_args
    from ..stages import role_of
    from ..data.tasks import get_task, scored_tasks
    from ..stages.evaluate import EvalConfig

    stages: list[Stage] = []
    eval_settings = {k: v for k, v in exp.evaluate.items() if k not in EVAL_EXTRA_KEYS}
    EvalConfig(**{**eval_settings, "tasks": []})  # validates counts and the scoring rule
    from ..evaluation.judges import check_judge_name

    for judge in eval_settings.get("judges", []):
        check_judge_name(judge, " in evaluate")
    ft_tasks = []
    for block in exp.finetune:
        for task in as_list(block.get("tasks", default(FinetuneBlock, "tasks")), "tasks"):
            get_task(task)
            if task not in ft_tasks:
                ft_tasks.append(task)
    scored = [t for t in ft_tasks if t in scored_tasks()]

    def evaluation(model_stage: Stage | None, tasks: list[str], labels: dict) -> Stage:
        cfg = hashed(EvalConfig(**{**eval_settings, "tasks": tasks}))
        base = {"model": exp.model} if model_stage is None else {}
        return Stage("evaluate", labels.get("slug", "model"), {**cfg, **base}, model_stage, labels)

    sink_settings = check_sink(exp.sink) if exp.sink is not None else {}

    def sink_stage(model_stage: Stage, labels: dict) -> Stage:
        return Stage("sink", labels["slug"], sink_settings, model_stage, labels)

    def attacked(block, seed, align, entry_a, entry, options, task, n, attack) -> list[Stage]:
        """One fine-tuning run (one attack of an attack space, or the block's only attack) with its
        evaluation and sink stages."""
        check_mixture_args(n, attack.p)
        data = {"task": task, "n": n, "poison_ratio": attack.p,
                "harmful_source": block.get("harmful_source", default(FinetuneBlock, "harmful_source")),
                "selection": block.get("selection", default(FinetuneBlock, "selection"))}
        train_block = {**block, "train": {**(block.get("train") or {}), **attack.train}}
        config = {"method": entry.name, "options": options,
                  "train": _train_config(train_block, seed, default(FinetuneBlock, "preset")), "data": data}
        if align is None:
            config["model"] = exp.model
        slug = f"{entry_a.label}-{entry.label}-{task}-p{_fmt_p(attack.p)}"
        labels = {**base_labels_of(seed), "align": entry_a.label, "finetune": entry.label, "task": task,
                  "p": attack.p, "slug": slug, "stage": "finetuned", **attack.labels}
        ft = Stage("finetune", slug, config, align, labels)
        out = [ft, evaluation(ft, [task] if task in scored_tasks() else [], labels)]
        repaired = coerce(block.get("repaired", default(FinetuneBlock, "repaired")), bool, "finetune repaired")
        for rep in _repair_stages(exp.repair if repaired else None, ft, seed):
            out += [rep, evaluation(rep, [task] if task in scored_tasks() else [], rep.labels)]
        return out + ([sink_stage(ft, labels)] if exp.sink is not None else [])

    def base_labels_of(seed: int) -> dict:
        return {"model": exp.model, "align": "none", "finetune": "none", "task": "", "p": None,
                "seed": seed, "slug": "base"}

    for seed in exp.seeds:
        base_labels = base_labels_of(seed)
        if exp.evaluate.get("base", True):
            stages.append(evaluation(None, scored, {**base_labels, "stage": "base"}))
        curated = None
        if exp.curate:
            from ..stages.curate import curate_config

            curate_config({"model": exp.model, "seed": seed, **exp.curate})  # validates before anything runs
            curated = Stage("curate", str(exp.curate.get("selector", default(CurateBlock, "selector"))),
                            {"model": exp.model, "seed": seed, **exp.curate}, None,
                            {**base_labels, "slug": "curate"})
            stages.append(curated)
        aligned_models: list[tuple[MethodEntry, Stage | None]] = []
        for raw_method in as_list(exp.align.get("methods", default(AlignBlock, "methods")), "align methods"):
            entry = MethodEntry.parse(raw_method, "align methods")
            if entry.name == "none":
                aligned_models.append((entry, None))
                continue
            data = {"source": exp.align.get("source", default(AlignBlock, "source")), "n": exp.align.get("n"),
                    "selection": exp.align.get("selection", default(AlignBlock, "selection"))}
            if data["n"] is not None:
                data["n"] = integer(data["n"], "align n")
                check_mixture_args(data["n"], 0.0)
            if "helpful" in exp.align or "helpful_n" in exp.align:  # only then: older stage hashes stay as they were
                if "helpful" not in exp.align or "helpful_n" not in exp.align:
                    raise ClinicError("align helpful and helpful_n go together: the helpful dataset and how many rows")
                data["helpful"] = str(exp.align["helpful"])
                data["helpful_n"] = integer(exp.align["helpful_n"], "align helpful_n")
                check_mixture_args(data["helpful_n"], 0.0)
            config = {"method": entry.name, "options": _method_options(entry, "align"),
                      "train": _train_config(_with_entry_train(exp.align, entry), seed, default(AlignBlock, "preset")),
                      "data": data}
            if curated is None:
                config["model"] = exp.model
            labels = {**base_labels, "align": entry.label, "slug": entry.label, "stage": "aligned"}
            align = Stage("align", entry.label, config, curated, labels)
            stages.append(align)
            aligned_models.append((entry, align))
            if exp.evaluate.get("aligned", True):
                stages.append(evaluation(align, scored, labels))
        for i, block in enumerate(exp.finetune):
            space, search = attack_settings(block, f"finetune block {i + 1}", eval_settings)
            only = as_list(block.get("aligned_with"), "aligned_with")
            for entry_a, align in aligned_models:
                if only and entry_a.label not in only:
                    continue
                for raw_method in as_list(block.get("methods", default(FinetuneBlock, "methods")), "finetune methods"):
                    entry = MethodEntry.parse(raw_method, "finetune methods")
                    options = _method_options(entry, "finetune")
                    entry_block = _with_entry_train(block, entry)
                    for task in as_list(entry_block.get("tasks", default(FinetuneBlock, "tasks")), "tasks"):
                        for p in as_list(entry_block.get("poison_ratios", default(FinetuneBlock, "poison_ratios")), "poison_ratios"):
                            p = float(coerce(p, float, "poison_ratios item"))  # 0 as 0.0: the hash as before
                            n = integer(entry_block.get("n", default(FinetuneBlock, "n")), "finetune n")
                            base_train = _train_config(entry_block, seed, default(FinetuneBlock, "preset"))
                            make = functools.partial(attacked, entry_block, seed, align, entry_a, entry, options, task, n)
                            for attack in attacks(space, base_train, p, search is not None):
                                made = make(attack)
                                stages.extend(made)
                            if search is not None:
                                # the search reads the fixed attack's last evaluation (after repair, if any)
                                fixed = next(s for s in reversed(made) if role_of(s.kind) == "measurement")
                                exp.searches.append(AttackSearch(space, search, fixed, functools.partial(
                                    _point_stages, make, fixed_point(space, base_train, p), base_train, p)))
        if exp.sink is not None and exp.sink.get("aligned", False):
            for _entry, align in aligned_models:
                if align is not None:
                    stages.append(sink_stage(align, align.labels))
    return _depth_first(_unique(stages))


def _depth_first(stages: list[Stage]) -> list[Stage]:
    """Each model stage followed by everything built on it (its evaluation, then each fine-tune
    with its own evaluation, repair and sink stages) before the next sibling: the runner takes
    stages in this order, so an aligned model's attacks run before the next alignment starts and a
    long grid yields finished cells early (a grid of six alignments ran all six before the first
    attack). Siblings keep their order; only the order changes, never a stage."""
    hashes = {s.hash for s in stages}  # by hash: a child may point at a dropped duplicate of its parent
    children: dict[str, list[Stage]] = {}
    roots = []
    for stage in stages:
        if stage.parent is not None and stage.parent.hash in hashes:
            children.setdefault(stage.parent.hash, []).append(stage)
        else:
            roots.append(stage)
    out: list[Stage] = []

    def visit(stage: Stage) -> None:
        out.append(stage)
        for child in children.get(stage.hash, []):
            visit(child)

    for root in roots:
        visit(root)
    return out


def _point_stages(make, base: dict, base_train: dict, p: float, point: dict) -> list[Stage]:
    return make(point_attack(point, base, base_train, p))


def _repair_stages(block: dict | None, ft: Stage, seed: int) -> list[Stage]:
    """One repair stage per method of the ``repair`` block, after the fine-tuned model ``ft``."""
    from ..stages.repair import repair_stage_config

    stages = []
    for raw_method in as_list((block or {}).get("methods"), "repair methods"):
        entry = MethodEntry.parse(raw_method, "repair methods")
        config = repair_stage_config(entry.name, dict(entry.options), block, seed)
        slug = f"{ft.labels['slug']}-{entry.label}"
        stages.append(Stage("repair", slug, config, ft, {**ft.labels, "repair": entry.label, "slug": slug,
                                                         "stage": "repaired"}))
    return stages


def check_sink(block: dict) -> dict:
    """The sink block's settings, typed and checked as :class:`~clinic.sink.config.SinkConfig`
    checks ``clinic sink``'s options; only the settings given (and ``n``) enter the stage config,
    so a stage's hash does not change when a field is added."""
    from ..sink.config import SinkConfig

    if not isinstance(block.get("aligned", False), bool):
        raise ClinicError(f"sink aligned must be true or false, got {block['aligned']!r}")
    given = {k: v for k, v in block.items() if k != "aligned"}
    given.setdefault("n", 100)
    checked = parse_settings(SinkConfig, given, "sink")
    return {k: getattr(checked, k) for k in given}


def _unique(stages: list[Stage]) -> list[Stage]:
    """Drop repeated stages (same hash), keeping the first; order stays topological."""
    seen, out = {}, []
    for stage in stages:
        if stage.hash not in seen:
            seen[stage.hash] = stage
            out.append(stage)
        elif "attack" in stage.labels and "attack" not in seen[stage.hash].labels:
            seen[stage.hash].labels.update(stage.labels)  # a fixed attack also run by a block without a space
    return out


def label_text(value) -> str:
    return _fmt_p(value) if isinstance(value, float) else str(value)


def select(stages: list[Stage], only: list[str]) -> list[Stage]:
    """The stages whose labels match every ``KEY=VALUE`` of ``only`` (several values of one key:
    any of them), with the stages they need (their parents), in plan order.

    ``clinic run FILE --only seed=1 --only align=tvaccine`` runs one seed of one alignment of a grid
    without a second experiment file: the stages and their hashes stay the file's own, so a store
    shared with the whole grid's runs is reused and the report covers the grid. A key no stage has,
    or a value no stage of the plan has for it, is a one-line error naming the choices."""
    from ..values import nearest_hint

    wanted: dict[str, set[str]] = {}
    for item in only:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ClinicError(f"--only {item!r}: expected KEY=VALUE, e.g. seed=1 or align=tvaccine")
        wanted.setdefault(key, set()).add(value)
    keys = sorted({k for s in stages for k in s.labels if k != "slug"})
    for key, values in wanted.items():
        if key not in keys:
            raise ClinicError(f"--only: no stage has a label {key!r}{nearest_hint(key, keys)}; choose one of "
                              f"{', '.join(keys)}")
        present = sorted({label_text(s.labels[key]) for s in stages if s.labels.get(key) is not None})
        for value in sorted(values - set(present)):
            raise ClinicError(f"--only {key}={value}: no stage of the plan has it{nearest_hint(value, present)}; "
                              f"the plan has {', '.join(present)}")
    chosen: set[str] = set()
    for stage in stages:
        if all(label_text(stage.labels.get(k)) in v for k, v in wanted.items()):
            node = stage
            while node is not None and node.hash not in chosen:
                chosen.add(node.hash)
                node = node.parent
    return [s for s in stages if s.hash in chosen]
