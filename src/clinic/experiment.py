"""``clinic run experiment.yaml``: a grid of stages, shared by hash, resumable, deterministic.

An experiment file names a model, the alignment methods, one or more fine-tuning blocks (each a
grid of methods × tasks × poison ratios), the evaluation and the sink analysis; seeds multiply
everything. The runner expands it into stages::

    [curate] -> align (per method, seed) -> finetune (per aligned model × method × task × p)
             -> [repair (per fine-tuned model × repair method)]
             -> evaluate (base, aligned, fine-tuned and repaired models) -> sink (per fine-tuned model)

Each stage's resolved config (which includes its parent's hash, never a path) is hashed; the
stage lives in ``<store>/<kind>-<label>-<hash>``. Identical stages are therefore shared: ten
fine-tuning runs on one aligned model align it once, and two experiment files pointing at the
same ``--store`` share their common stages.

Resuming: every stage writes through :class:`clinic.rundir.RunDir` (staging folder, renamed into
place when complete, ``DONE`` last). A killed runner (even ``kill -9``) leaves at most a
``.<stage>.partial-*`` folder, which the next run deletes before re-running that stage from its
start; finished stages are skipped. Stages restart from scratch rather than from a training
checkpoint: on CPU a stage is deterministic, so a resumed experiment gives the same metrics as an
uninterrupted one (tested).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from .attacks import AttackSearch, attack_settings, attacks, fixed_point, point_attack
from .errors import ClinicError
from .rundir import MARKER, check_writable, read_json, write_marker
from .values import INT_MAX, check_range, coerce

# --------------------------------------------------------------------------------------------
# the experiment file


EXPERIMENT_KEYS = {
    "name": "experiment name (default: the file name)",
    "model": "model alias, path or hub id (default smollm2-135m-instruct)",
    "seeds": "list of seeds; every stage runs once per seed (default [0])",
    "curate": "optional curation block: selector, ratio or k, and selector options",
    "align": "alignment block: methods, preset, train overrides, data source and n",
    "finetune": "one fine-tuning block or a list of them: methods, tasks, n, poison_ratios, ...",
    "evaluate": "evaluation settings (EvalConfig fields) plus base/aligned: evaluate those models too",
    "sink": "optional sink analysis of every fine-tuned model: n, batch_size, max_length, ...",
    "repair": "optional post-fine-tuning repair of every fine-tuned model: methods, batch_size, max_length",
}
CURATE_KEYS = {"selector", "ratio", "k", "options"}
ALIGN_KEYS = {"methods", "preset", "train", "source", "n", "selection", "helpful", "helpful_n"}
FINETUNE_KEYS = {"methods", "preset", "train", "tasks", "n", "poison_ratios", "harmful_source", "selection",
                 "aligned_with", "attack_space", "search"}
SINK_KEYS = {"n", "batch_size", "max_length", "sink_index", "mode", "aligned"}
EVAL_EXTRA_KEYS = {"base", "aligned"}
REPAIR_KEYS = {"methods", "batch_size", "max_length"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last one silently: a second ``finetune:`` block would drop the first)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ClinicError(f"key {key!r} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                                  f"merge the two into one")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, path: Path):
    """The experiment file's content; a one-line error naming the file for invalid YAML."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ClinicError(f"experiment file {path} is not valid YAML{where}: {first}") from None
    except ClinicError as exc:
        raise ClinicError(f"experiment file {path}: {exc}") from None


# Names that become folder names (the experiment directory, method labels in stage directories).
_SAFE_NAME = re.compile(r"^[^/\\\x00-\x1f.][^/\\\x00-\x1f]{0,99}$")


def check_name(value, where: str) -> str:
    """``value`` when it can be a folder name as it is (no ``/`` or ``\\``, no leading dot, no control
    characters)."""
    text = str(value)
    if not _SAFE_NAME.match(text):
        raise ClinicError(f"{where} {text!r} cannot name a folder: no '/' or '\\', no leading '.', "
                          f"at most 100 characters")
    return text


def _integer(value, where: str) -> int:
    return coerce(value, int, where)


def _check_keys(block: dict, allowed, where: str) -> None:
    if not isinstance(block, dict):
        raise ClinicError(f"{where} must be a mapping, got {type(block).__name__}")
    for key in block:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(sorted(allowed))}"
            raise ClinicError(f"unknown key {key!r} in {where}{hint}")


@dataclass(frozen=True)
class MethodEntry:
    """A method with its options; ``label`` names it in directories and tables."""

    name: str
    options: tuple = ()  # sorted (key, value) pairs, hashable
    label: str = ""

    @classmethod
    def parse(cls, entry, where: str) -> MethodEntry:
        if isinstance(entry, str):
            return cls(entry, (), check_name(entry, f"{where}: method"))
        if isinstance(entry, dict) and "name" in entry:
            options = {k: v for k, v in entry.items() if k not in ("name", "label")}
            if any(isinstance(v, (dict, list)) for v in options.values()):
                raise ClinicError(f"{where}: options of method {entry['name']!r} must be single values")
            label = check_name(entry.get("label", entry["name"]), f"{where}: label")
            return cls(str(entry["name"]), tuple(sorted(options.items())), label)
        raise ClinicError(f"{where}: a method is a name or a mapping with 'name' (and options), got {entry!r}")


def _as_list(value, where: str) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, (str, int, float)):
        return [value]
    raise ClinicError(f"{where} must be a list, got {value!r}")


def _block(raw: dict, key: str, allowed, where: str, default=None) -> dict | None:
    """The mapping under ``key`` (checked against ``allowed``), or ``default`` when absent/empty."""
    value = raw.get(key)
    if value is None:
        return default
    _check_keys(value, allowed, where)
    return dict(value)


@dataclass
class Experiment:
    name: str
    model: str
    seeds: list[int]
    curate: dict | None
    align: dict
    finetune: list[dict]
    evaluate: dict
    sink: dict | None
    source_text: str = ""
    parsed: dict = field(default_factory=dict)  # the file's content: what a resume compares
    searches: list = field(default_factory=list)  # budgeted attack searches (clinic.attacks), filled by plan()
    repair: dict | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> Experiment:
        path = Path(path)
        if not path.exists():
            raise ClinicError(f"experiment file {path} does not exist")
        if not path.is_file():
            raise ClinicError(f"experiment file {path} is not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ClinicError(f"experiment file {path} is not UTF-8 text") from None
        except OSError as exc:
            raise ClinicError(f"experiment file {path} cannot be read: {exc.strerror or exc}") from None
        raw = parse_yaml(text, path)
        exp = cls.from_dict(raw if raw is not None else {}, default_name=path.stem)
        exp.source_text = text
        exp.parsed = raw if raw is not None else {}
        return exp

    @classmethod
    def from_dict(cls, raw: dict, default_name: str = "experiment") -> Experiment:
        _check_keys(raw, EXPERIMENT_KEYS, "the experiment file")
        seeds = [_integer(s, "seeds item") for s in _as_list(raw.get("seeds", [0]), "seeds")]
        if not seeds:
            raise ClinicError("seeds must list at least one seed")
        for seed in seeds:
            check_range(seed, "seeds item", 0, INT_MAX)
        curate = _block(raw, "curate", CURATE_KEYS, "curate")
        align = _block(raw, "align", ALIGN_KEYS, "align", {"methods": ["sft"]})
        blocks = raw.get("finetune", [])
        blocks = [blocks] if isinstance(blocks, dict) else _as_list(blocks, "finetune")
        for i, block in enumerate(blocks):
            _check_keys(block, FINETUNE_KEYS, f"finetune block {i + 1}")
            if not isinstance(block.get("train") or {}, dict):
                raise ClinicError(f"train in finetune block {i + 1} must be a mapping, got {block['train']!r}")
        if not isinstance(align.get("train") or {}, dict):
            raise ClinicError(f"train in align must be a mapping, got {align['train']!r}")
        from .pipeline import EvalConfig

        evaluate = _block(raw, "evaluate", {f.name for f in fields(EvalConfig)} | EVAL_EXTRA_KEYS, "evaluate", {})
        for key in ("judges", "harmful_sets", "tasks"):  # `judges: keyword` means [keyword]
            if isinstance(evaluate.get(key), str):
                evaluate[key] = [evaluate[key]]
        sink = _block(raw, "sink", SINK_KEYS, "sink")
        for key in ("name", "model"):
            if key in raw and not isinstance(raw[key], str):
                raise ClinicError(f"{key} must be text, got {raw[key]!r}")
        name = check_name(raw.get("name", default_name), "experiment name")
        exp = cls(name=name, model=str(raw.get("model", "smollm2-135m-instruct")),
                  seeds=seeds, curate=curate, align=align, finetune=blocks, evaluate=evaluate, sink=sink,
                  repair=_block(raw, "repair", REPAIR_KEYS, "repair"))
        exp.plan()  # validates names, ratios and options before anything runs
        return exp

    def plan(self) -> list[Stage]:
        self.searches = []
        return _expand(self)


# --------------------------------------------------------------------------------------------
# stages


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
    from .methods.config import train_config

    overrides = dict(block.get("train") or {})
    overrides["seed"] = seed
    return asdict(train_config(block.get("preset", default_preset), **overrides))


def _method_options(entry: MethodEntry, stage: str) -> dict:
    from .methods.registry import get_method, method_config

    spec = get_method(entry.name, stage)
    return asdict(method_config(spec, **dict(entry.options)))


def _fmt_p(p: float) -> str:
    return f"{p:g}"


def _expand(exp: Experiment) -> list[Stage]:
    from .data.mixture import check_mixture_args
    from .pipeline import EvalConfig
    from .data.tasks import SCORED_TASKS, get_task

    stages: list[Stage] = []
    eval_settings = {k: v for k, v in exp.evaluate.items() if k not in EVAL_EXTRA_KEYS}
    EvalConfig(**{**eval_settings, "tasks": []})  # validates counts and the scoring rule
    from .evaluation.judges import check_judge_name

    for judge in eval_settings.get("judges", []):
        check_judge_name(judge, " in evaluate")
    ft_tasks = []
    for block in exp.finetune:
        for task in _as_list(block.get("tasks", ["sst2"]), "tasks"):
            get_task(task)
            if task not in ft_tasks:
                ft_tasks.append(task)
    scored = [t for t in ft_tasks if t in SCORED_TASKS]

    def evaluation(model_stage: Stage | None, tasks: list[str], labels: dict) -> Stage:
        cfg = asdict(EvalConfig(**{**eval_settings, "tasks": tasks}))
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
                "harmful_source": block.get("harmful_source", "beavertails-harmful"),
                "selection": block.get("selection", "random")}
        train_block = {**block, "train": {**(block.get("train") or {}), **attack.train}}
        config = {"method": entry.name, "options": options,
                  "train": _train_config(train_block, seed, "cpu-finetune"), "data": data}
        if align is None:
            config["model"] = exp.model
        slug = f"{entry_a.label}-{entry.label}-{task}-p{_fmt_p(attack.p)}"
        labels = {**base_labels_of(seed), "align": entry_a.label, "finetune": entry.label, "task": task,
                  "p": attack.p, "slug": slug, "stage": "finetuned", **attack.labels}
        ft = Stage("finetune", slug, config, align, labels)
        out = [ft, evaluation(ft, [task] if task in SCORED_TASKS else [], labels)]
        for rep in _repair_stages(exp.repair, ft, seed):
            out += [rep, evaluation(rep, [task] if task in SCORED_TASKS else [], rep.labels)]
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
            from .curation.stage import curate_config

            curate_config({"model": exp.model, "seed": seed, **exp.curate})  # validates before anything runs
            curated = Stage("curate", str(exp.curate.get("selector", "pharmacist")),
                            {"model": exp.model, "seed": seed, **exp.curate}, None,
                            {**base_labels, "slug": "curate"})
            stages.append(curated)
        aligned_models: list[tuple[MethodEntry, Stage | None]] = []
        for raw_method in _as_list(exp.align.get("methods", ["sft"]), "align methods"):
            entry = MethodEntry.parse(raw_method, "align methods")
            if entry.name == "none":
                aligned_models.append((entry, None))
                continue
            data = {"source": exp.align.get("source", "refusals"), "n": exp.align.get("n"),
                    "selection": exp.align.get("selection", "random")}
            if data["n"] is not None:
                data["n"] = _integer(data["n"], "align n")
                check_mixture_args(data["n"], 0.0)
            if ("helpful" in exp.align or "helpful_n" in exp.align) and curated is not None:
                raise ClinicError("align helpful cannot be combined with a curate block yet: the curated subset is the alignment data")
            if "helpful" in exp.align or "helpful_n" in exp.align:  # only then: older stage hashes stay as they were
                if "helpful" not in exp.align or "helpful_n" not in exp.align:
                    raise ClinicError("align helpful and helpful_n go together: the helpful dataset and how many rows")
                data["helpful"] = str(exp.align["helpful"])
                data["helpful_n"] = _integer(exp.align["helpful_n"], "align helpful_n")
                check_mixture_args(data["helpful_n"], 0.0)
            config = {"method": entry.name, "options": _method_options(entry, "align"),
                      "train": _train_config(exp.align, seed, "cpu-align"), "data": data}
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
            only = _as_list(block.get("aligned_with"), "aligned_with")
            for entry_a, align in aligned_models:
                if only and entry_a.label not in only:
                    continue
                for raw_method in _as_list(block.get("methods", ["sft"]), "finetune methods"):
                    entry = MethodEntry.parse(raw_method, "finetune methods")
                    options = _method_options(entry, "finetune")
                    for task in _as_list(block.get("tasks", ["sst2"]), "tasks"):
                        for p in _as_list(block.get("poison_ratios", [0.1]), "poison_ratios"):
                            p = float(coerce(p, float, "poison_ratios item"))  # 0 as 0.0: the hash as before
                            n = _integer(block.get("n", 1000), "finetune n")
                            base_train = _train_config(block, seed, "cpu-finetune")
                            make = functools.partial(attacked, block, seed, align, entry_a, entry, options, task, n)
                            for attack in attacks(space, base_train, p, search is not None):
                                stages.extend(make(attack))
                            if search is not None:
                                fixed = next(s for s in stages[::-1] if s.kind == "evaluate")
                                exp.searches.append(AttackSearch(space, search, fixed, functools.partial(
                                    _point_stages, make, fixed_point(space, base_train, p), base_train, p)))
        if exp.sink is not None and exp.sink.get("aligned", False):
            for _entry, align in aligned_models:
                if align is not None:
                    stages.append(sink_stage(align, align.labels))
    return _unique(stages)


def _point_stages(make, base: dict, base_train: dict, p: float, point: dict) -> list[Stage]:
    return make(point_attack(point, base, base_train, p))


def _repair_stages(block: dict | None, ft: Stage, seed: int) -> list[Stage]:
    """One repair stage per method of the ``repair`` block, after the fine-tuned model ``ft``."""
    from .repair.stage import repair_stage_config

    stages = []
    for raw_method in _as_list((block or {}).get("methods"), "repair methods"):
        entry = MethodEntry.parse(raw_method, "repair methods")
        config = repair_stage_config(entry.name, dict(entry.options), block, seed)
        slug = f"{ft.labels['slug']}-{entry.label}"
        stages.append(Stage("repair", slug, config, ft, {**ft.labels, "repair": entry.label, "slug": slug,
                                                         "stage": "repaired"}))
    return stages


def check_sink(block: dict) -> dict:
    """The sink block's settings, typed and checked as ``clinic sink`` checks its options."""
    from .modeling.attention import SINK_MODES

    settings = {k: v for k, v in block.items() if k != "aligned"}
    settings.setdefault("n", 100)
    for key in ("n", "batch_size", "max_length", "sink_index"):
        if key in settings:
            settings[key] = _integer(settings[key], f"sink {key}")
    for key in ("n", "batch_size", "max_length"):
        if key in settings and settings[key] < 1:
            raise ClinicError(f"sink {key} must be at least 1, got {settings[key]}")
    if settings.get("sink_index", 0) < 0:
        raise ClinicError(f"sink sink_index must be non-negative, got {settings['sink_index']}")
    if settings.get("mode", "fixed") not in SINK_MODES:
        raise ClinicError(f"unknown sink mode {settings['mode']!r} in sink; choose one of {', '.join(SINK_MODES)}")
    if not isinstance(block.get("aligned", False), bool):
        raise ClinicError(f"sink aligned must be true or false, got {block['aligned']!r}")
    return settings


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


# --------------------------------------------------------------------------------------------
# running


def stage_path(store: Path, stage: Stage) -> Path:
    return store / stage.dirname


def is_done(store: Path, stage: Stage) -> bool:
    return (stage_path(store, stage) / "DONE").exists()


def _clear_partials(store: Path, stage: Stage) -> None:
    for stale in store.glob(f".{stage.dirname}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _model_ref(store: Path, exp: Experiment, stage: Stage) -> str:
    return str(stage_path(store, stage.parent)) if stage.parent is not None else exp.model


def run_stage(store: Path, exp: Experiment, stage: Stage, judges: dict) -> Path:
    from .pipeline import DataSpec, EvalConfig, run_evaluate, run_train

    out = stage_path(store, stage)
    cfg = stage.config
    if stage.kind in ("align", "finetune"):
        from .methods.config import TrainConfig

        model_ref = cfg.get("model") or _model_ref(store, exp, stage)
        if stage.kind == "align" and stage.parent is not None and stage.parent.kind == "curate":
            model_ref = exp.model
            data = DataSpec(source=str(stage_path(store, stage.parent) / "subset.jsonl"), n=None)
        elif stage.kind == "align":
            data = DataSpec(source=cfg["data"]["source"], n=cfg["data"]["n"], selection=cfg["data"]["selection"],
                            helpful=cfg["data"].get("helpful"), helpful_n=cfg["data"].get("helpful_n"))
        else:
            data = DataSpec(**cfg["data"])
        return run_train(stage.kind, model=model_ref, method=cfg["method"], train=TrainConfig(**cfg["train"]),
                         data=data, output=out, method_options=cfg["options"])
    if stage.kind == "evaluate":
        settings = {k: v for k, v in cfg.items() if k != "model"}
        model_ref = cfg.get("model") or _model_ref(store, exp, stage)
        return run_evaluate(model_ref, EvalConfig(**settings), out, judges=judges)
    if stage.kind == "sink":
        from .sink import run_sink_analysis

        return run_sink_analysis(_model_ref(store, exp, stage), out, **cfg)
    if stage.kind == "repair":
        from .repair.stage import run_repair_stage

        return run_repair_stage(cfg, _model_ref(store, exp, stage), out)
    if stage.kind == "curate":
        from .curation.stage import run_curate_stage

        return run_curate_stage(cfg, out)
    raise ClinicError(f"unknown stage kind {stage.kind!r}")


def write_plan(root: Path, store: Path, exp: Experiment, stages: list[Stage]) -> None:
    plan = {
        "name": exp.name,
        "model": exp.model,
        "store": os.path.relpath(store, root),
        "stages": [{"kind": s.kind, "dir": s.dirname, "hash": s.hash, "parent": s.parent.hash if s.parent else None,
                    "labels": s.labels, "config": s.config} for s in stages],
    }
    (root / "plan.json").write_text(json.dumps(plan, indent=2, default=str) + "\n")


def run_experiment(path: str | Path, output: str | Path | None = None, store: str | Path | None = None,
                   dry_run: bool = False, report: bool = True) -> Path:
    """Run (or resume) every stage of an experiment file; returns the experiment directory."""
    exp = Experiment.from_file(path)
    stages = exp.plan()
    root = Path(output or Path("runs") / exp.name).expanduser().resolve()
    store_dir = Path(store).expanduser().resolve() if store else root / "stages"
    recorded = root / "experiment.yaml"
    if recorded.exists() and _recorded_content(recorded) != _canonical(exp.parsed):
        # the parsed content, not the bytes: an edited comment or reformatting is the same experiment
        raise ClinicError(f"{root} holds a different experiment (its experiment.yaml differs); "
                          f"choose another --output")
    if root.exists() and not root.is_dir():
        raise ClinicError(f"experiment directory {root} is a file; choose another --output")
    done = [s for s in stages if is_done(store_dir, s)]
    counts = {}
    for s in stages:
        counts[s.kind] = counts.get(s.kind, 0) + 1
    print(f"clinic run {exp.name}: {len(stages)} stages ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
          f"{len(done)} already done; store {store_dir}")
    if dry_run:
        for s in stages:
            print(f"  [{'done' if is_done(store_dir, s) else 'todo'}] {s.dirname}")
        for group in exp.searches:
            print(f"  [search] up to {group.search['budget']} more attacks on {group.fixed.dirname}")
        return root
    check_writable(root, root)
    check_writable(store_dir, store_dir)
    if store_dir.exists() and not store_dir.is_dir():
        raise ClinicError(f"stage store {store_dir} is a file; choose another --store")
    from .evaluation.judges import get_judge

    judges = {name: get_judge(name) for name in exp.evaluate.get("judges", ["keyword", "harm-ce"])}
    root.mkdir(parents=True, exist_ok=True)
    if not (root / MARKER).exists():
        write_marker(root, "experiment")
    store_dir.mkdir(parents=True, exist_ok=True)
    if not recorded.exists():
        recorded.write_text(exp.source_text)
    write_plan(root, store_dir, exp, stages)
    _run_pending(store_dir, exp, stages, judges)
    for group in exp.searches:  # budgeted attack searches: each trial's stages are added as it is asked
        def run_point(new: list[Stage]) -> dict:
            known = {t.hash for t in stages}
            stages.extend(s for s in new if s.hash not in known)
            write_plan(root, store_dir, exp, stages)  # the report sees the trials
            _run_pending(store_dir, exp, new, judges)
            return read_json(stage_path(store_dir, new[1]) / "metrics.json")

        group.run(run_point, read_json(stage_path(store_dir, group.fixed) / "metrics.json"))
    if report:
        from .report import write_report

        write_report(root, root / "report", overwrite=True)
    return root


def _canonical(content) -> str:
    return json.dumps(content, sort_keys=True, default=str)


def _recorded_content(recorded: Path) -> str:
    try:
        return _canonical(parse_yaml(recorded.read_text(encoding="utf-8"), recorded) or {})
    except (ClinicError, OSError, UnicodeDecodeError):
        return ""  # unreadable: not the same experiment


def _run_pending(store: Path, exp: Experiment, stages: list[Stage], judges: dict, poll_s: float = 5.0) -> None:
    """Run every unfinished stage, in plan order where possible, sharing the store with any
    other runner.

    A stage is run by one runner at a time: it holds a :class:`filelock.FileLock` on
    ``.<stage>.lock`` in the store. Several runners may share a store (two experiment files, or
    two workers on one file): each takes the next stage whose parent is done and whose lock is
    free, and waits when every remaining stage is held by another runner. The OS releases the
    lock of a killed runner, so there is no stale lock to detect; the empty lock files stay."""
    pending = [s for s in stages if not is_done(store, s)]
    total, finished, waiting_said = len(pending), 0, False
    while pending:
        ran = False
        for stage in list(pending):
            if is_done(store, stage):  # another runner finished it
                pending.remove(stage)
                continue
            if stage.parent is not None and not is_done(store, stage.parent):
                continue
            lock = FileLock(store / f".{stage.dirname}.lock", timeout=0)
            try:
                lock.acquire()
            except Timeout:  # another runner holds it
                continue
            try:
                if not is_done(store, stage):
                    _clear_partials(store, stage)
                    finished += 1
                    print(f"[{finished}/{total}] {stage.kind} {stage.dirname}", flush=True)
                    start = time.perf_counter()
                    run_stage(store, exp, stage, judges)
                    print(f"[{finished}/{total}] done in {time.perf_counter() - start:.0f} s", flush=True)
            except ClinicError:
                if not is_done(store, stage):  # not "someone else finished it first"
                    raise
            finally:
                lock.release()
            pending.remove(stage)
            ran, waiting_said = True, False
            break  # rescan from the top: plan order first
        if pending and not ran:
            if not waiting_said:
                print(f"waiting for {len(pending)} stage(s) held by another runner", flush=True)
                waiting_said = True
            _wait(poll_s)


def _wait(seconds: float) -> None:
    time.sleep(seconds)
