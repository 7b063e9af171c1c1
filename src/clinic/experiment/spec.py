"""The experiment file: read, parsed (strict YAML, no key given twice) and checked key by key
before anything runs; :class:`Experiment` holds its blocks."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from ..errors import ClinicError
from ..values import INT_MAX, check_range, nearest_hint, parse_settings
from .blocks import AlignBlock, CurateBlock, ExecutionConfig, FinetuneBlock, default
from .entries import as_list, check_name, integer
from .plan import EVAL_EXTRA_KEYS, Stage, expand

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
    "execution": "how and where it runs (store, device, dtype, executor, resources): never part of a stage's hash",
}
SINK_EXTRA_KEYS = {"aligned"}  # analyse the aligned models too
REPAIR_EXTRA_KEYS = {"methods"}


def settings_keys(cls, extra=(), drop=()) -> set[str]:
    """The keys of a block that holds the settings dataclass ``cls`` (the same dataclass as the
    command's options): its fields, plus ``extra`` and less ``drop``. Derived, not listed, so a
    new setting is an experiment key the moment it is a field."""
    return ({f.name for f in fields(cls) if f.init} | set(extra)) - set(drop)


# The curate, align and finetune blocks are no command's options: their keys are the fields of
# their own dataclasses (.blocks).
CURATE_KEYS = settings_keys(CurateBlock)
ALIGN_KEYS = settings_keys(AlignBlock)
FINETUNE_KEYS = settings_keys(FinetuneBlock)


def block_keys() -> dict[str, set[str]]:
    """The allowed keys of the blocks checked against a settings dataclass. Imported here, when a
    file is read, because those dataclasses live in the stage modules (which import torch)."""
    from ..modeling.training import TrainConfig
    from ..stages.evaluate import EvalConfig
    from ..repair.base import RepairConfig
    from ..sink.config import SinkConfig

    return {"train": settings_keys(TrainConfig), "evaluate": settings_keys(EvalConfig, EVAL_EXTRA_KEYS),
            "sink": settings_keys(SinkConfig, SINK_EXTRA_KEYS),
            "repair": settings_keys(RepairConfig, REPAIR_EXTRA_KEYS, drop={"seed"})}  # seeds: the file's


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
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ClinicError(f"experiment file {path} is not valid YAML{where}: {first}") from None
    except ClinicError as exc:
        raise ClinicError(f"experiment file {path}: {exc}") from None


def _check_keys(block: dict, allowed, where: str) -> None:
    if not isinstance(block, dict):
        raise ClinicError(f"{where} must be a mapping, got {type(block).__name__}")
    for key in block:
        if key not in allowed:
            hint = nearest_hint(key, allowed) or f"; allowed: {', '.join(sorted(allowed))}"
            raise ClinicError(f"unknown key {key!r} in {where}{hint}")


def _block(raw: dict, key: str, allowed, where: str, default=None) -> dict | None:
    """The mapping under ``key`` (checked against ``allowed``), or ``default`` when absent/empty."""
    value = raw.get(key)
    if value is None:
        return default
    _check_keys(value, allowed, where)
    return dict(value)


def _check_train(block: dict, train_cls, where: str) -> None:
    """A block's ``train`` overrides: a mapping of TrainConfig fields, each checked on its own
    here (the plan checks them again with the preset)."""
    train = block.get("train")
    if not isinstance(train or {}, dict):
        raise ClinicError(f"train in {where} must be a mapping, got {train!r}")
    parse_settings(train_cls, train or {}, f"train in {where}")


def _parsed(raw: dict, key: str, cls, where: str, default=None) -> dict | None:
    """The mapping under ``key``, parsed into ``cls`` to check it, kept as given (``default``
    when absent or empty)."""
    value = raw.get(key)
    if value is None:
        return default
    parse_settings(cls, value, where)
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
    searches: list = field(default_factory=list)  # budgeted attack searches (clinic.experiment.attacks), filled by plan()
    repair: dict | None = None
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

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
        seeds = [integer(s, "seeds item") for s in as_list(raw.get("seeds", [0]), "seeds")]
        if not seeds:
            raise ClinicError("seeds must list at least one seed")
        for seed in seeds:
            check_range(seed, "seeds item", 0, INT_MAX)
        # Every block is parsed into its dataclass (the one validator, clinic.values.parse_settings);
        # the plan keeps what the file gives, so a stage's hash covers only the keys written.
        curate = _parsed(raw, "curate", CurateBlock, "curate")
        align = _parsed(raw, "align", AlignBlock, "align", {"methods": default(AlignBlock, "methods")})
        blocks = raw.get("finetune", [])
        blocks = [blocks] if isinstance(blocks, dict) else as_list(blocks, "finetune")
        from ..modeling.training import TrainConfig
        from ..repair.base import RepairConfig
        from ..stages.evaluate import EvalConfig

        for i, block in enumerate(blocks):
            parse_settings(FinetuneBlock, block, f"finetune block {i + 1}")
            _check_train(block, TrainConfig, f"finetune block {i + 1}")
        _check_train(align, TrainConfig, "align")
        evaluate = raw.get("evaluate") or {}
        if not isinstance(evaluate, dict):
            raise ClinicError(f"evaluate must be a mapping, got {type(evaluate).__name__}")
        evaluate = dict(evaluate)
        for key in ("judges", "harmful_sets", "tasks"):  # `judges: keyword` means [keyword]
            if isinstance(evaluate.get(key), str):
                evaluate[key] = [evaluate[key]]
        parse_settings(EvalConfig, evaluate, "evaluate", extra=EVAL_EXTRA_KEYS)
        keys = block_keys()
        sink = _block(raw, "sink", keys["sink"], "sink")  # parsed into SinkConfig by the plan (check_sink)
        repair = _block(raw, "repair", keys["repair"], "repair")
        if repair is not None:  # seeds: the file's
            parse_settings(RepairConfig, repair, "repair", extra=REPAIR_EXTRA_KEYS, drop={"seed"})
        execution = parse_settings(ExecutionConfig, raw.get("execution") or {}, "execution")
        for key in ("name", "model"):
            if key in raw and not isinstance(raw[key], str):
                raise ClinicError(f"{key} must be text, got {raw[key]!r}")
        name = check_name(raw.get("name", default_name), "experiment name")
        exp = cls(name=name, model=str(raw.get("model", "smollm2-135m-instruct")),
                  seeds=seeds, curate=curate, align=align, finetune=blocks, evaluate=evaluate, sink=sink,
                  repair=repair, execution=execution)
        exp.plan()  # validates names, ratios and options before anything runs
        return exp

    def plan(self) -> list[Stage]:
        self.searches = []
        return expand(self)

