"""The method registry: every align and finetune method by name (a :class:`MethodSpec`), filled by
discovery (each module of :mod:`clinic.methods` registers its own with :func:`register_method`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ClinicError
from ..registry import Registry
from ..values import check_fields, parse_settings
from .config import STAGES, MethodConfig
from .engines import ENGINES

if TYPE_CHECKING:
    from .trainer import ClinicTrainer


@dataclass(frozen=True)
class MethodSpec:
    name: str
    stages: tuple[str, ...]
    config: type[MethodConfig]
    trainer: type[ClinicTrainer]
    summary: str
    engines: tuple[str, ...] = ENGINES  # the multi-process engines it runs under


#: Every method, listed alphabetically; importing a module of this package registers its methods.
METHODS = Registry("method", package=__package__, sort=True)


def register_method(name: str, stage: str | tuple[str, ...], config: type[MethodConfig] = MethodConfig, summary: str = "",
                    engines: tuple[str, ...] = ("ddp",)):
    """Class decorator registering a trainer under ``name`` for ``stage`` (align, finetune or both)
    that runs in one process and under the multi-process ``engines`` (see :mod:`.engines`)."""
    stages = (stage,) if isinstance(stage, str) else tuple(stage)
    if not set(stages) <= set(STAGES):
        raise ValueError(f"stage must be among {STAGES}")
    if not set(engines) <= set(ENGINES):
        raise ValueError(f"engines must be among {ENGINES}")

    def wrap(trainer_cls):
        METHODS.register(name, MethodSpec(name, stages, config, trainer_cls,
                                          summary or (trainer_cls.__doc__ or "").strip(), tuple(engines)))
        trainer_cls.method_name, trainer_cls.engines = name, tuple(engines)
        return trainer_cls

    return wrap


def pace_settings(name: str, options: dict | None) -> tuple:
    """``((field, value), ...)`` of the method's settings that change what one optimizer step costs
    (fields whose metadata says ``"pace": True``, e.g. T-Vaccine's active layers), read from a
    stage's ``options`` (a finished stage records them all; a planned one names only those given:
    the others are the defaults). The estimator paces a stage by finished stages with the same
    ones first. An unknown method has none."""
    if name not in METHODS:
        return ()
    options = options or {}
    return tuple((f.name, options.get(f.name, f.default)) for f in dataclasses.fields(METHODS[name].config)
                 if f.metadata.get("pace"))


def methods_for(stage: str) -> dict[str, MethodSpec]:
    return METHODS.filter(lambda spec: stage in spec.stages)


def get_method(name: str, stage: str) -> MethodSpec:
    valid = methods_for(stage)
    if name not in valid:
        if name in METHODS:  # a method of the other stage
            other, a = METHODS[name].stages[0], {"align": "an align", "finetune": "a finetune"}
            raise ClinicError(f"{name!r} is {a[other]} method, not {a[stage]} method (run `clinic {other} --method {name}`); "
                              f"{stage} methods: {', '.join(valid)}")
        raise METHODS.unknown(name, valid, kind=f"{stage} method")
    return valid[name]


def method_config(spec: MethodSpec, **values) -> MethodConfig:
    """The method's config from user values (``None``: not given), through the one validator
    (:func:`clinic.values.parse_settings`: unknown names, types, choices and ranges)."""
    cfg = parse_settings(spec.config, {k: v for k, v in values.items() if v is not None}, f"{spec.name} options",
                         item=f"{spec.name} option ")
    check_fields(cfg, f"{spec.name} option ")
    for _source, size_field in spec.config.streams.values():  # an empty stream fails only inside the trainer
        size = getattr(cfg, size_field)
        if size is not None and size < 1:
            raise ClinicError(f"{spec.name} option {size_field} must be at least 1, got {size}")
    return cfg
