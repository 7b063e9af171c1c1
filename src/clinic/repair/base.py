"""The repair-method interface: a registry by name, the context a method is given, what it returns.

A repair method is one function ``(ctx: RepairContext, cfg) -> dict`` that changes the weights of
the fine-tuning adapter in place (``ctx.model`` is the fine-tuned model with that adapter loaded,
trainable, on top of the merged earlier chain) and returns what it measured for ``metrics.json``.
Register one with::

    @dataclass
    class AntidoteConfig:
        fraction: float = field(default=0.1, metadata={"help": "..."})

    @register_repair("antidote", config=AntidoteConfig, summary="...")
    def antidote(ctx, cfg): ...

The context loads what a method asks for, once: the model (:attr:`RepairContext.model`), the
reference models of the chain (:meth:`RepairContext.linear_weights`) and tokenized data sets
(:meth:`RepairContext.workspace`, the :class:`~clinic.modeling.workspace.GradientWorkspace` curation uses too:
same tokenization and prompt format as training, batches, mean losses and their gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import ClinicError
from ..registry import Registry
from ..values import INT_MAX, check_fields, parse_settings


@dataclass(frozen=True)
class RepairSpec:
    name: str
    fn: Callable
    config: type
    summary: str


#: Every repair method; importing a module of :mod:`clinic.repair` registers its own. They list
#: in their ``order`` (SafeLoRA, Antidote, Panacea: the order of the docs), new ones after.
REPAIRS = Registry("repair method", package=__package__)


def register_repair(name: str, config: type, summary: str, order: float = float("inf")):
    def wrap(fn):
        REPAIRS.register(name, RepairSpec(name, fn, config, summary), order=order)
        return fn

    return wrap


def repair_methods() -> dict[str, RepairSpec]:
    return dict(REPAIRS.items())


def get_repair(name: str) -> RepairSpec:
    return REPAIRS.get(name)


def repair_config(spec: RepairSpec, **values):
    """The method's config from user values (``None``: not given), through the one validator
    (:func:`clinic.values.parse_settings`)."""
    cfg = parse_settings(spec.config, {k: v for k, v in values.items() if v is not None}, f"{spec.name} options",
                         item=f"{spec.name} option ")
    check_fields(cfg, f"{spec.name} option ")
    return cfg


@dataclass
class RepairConfig:
    """Settings every repair method shares (data passes and seeding)."""

    seed: int = field(default=0, metadata={"help": "seed: data samples of the repair", "range": (0, INT_MAX)})
    batch_size: int = field(default=8, metadata={"help": "batch size of the forward/backward passes",
                                                 "range": (1, None)})
    max_length: int | None = field(default=None, metadata={
        "help": "truncate samples to this many tokens (default: the fine-tuned run's, else 256)", "range": (1, None)})

    def __post_init__(self):
        check_fields(self, "repair setting ")


def lora_layers(model) -> list[tuple[str, torch.nn.Module]]:
    """``(module name without the PEFT prefix, LoRA layer)`` for every layer of the default adapter."""
    layers = []
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            layers.append((name.removeprefix("base_model.model."), module))
    if not layers:
        raise ClinicError("the fine-tuned model has no LoRA adapter layers to repair")
    return layers


class RepairContext:
    """What a repair method may use. ``chain``: the fine-tuned model (its last adapter is the
    fine-tuning's); ``fmt``: its prompt format; ``run_config``: the fine-tuned run's config.yaml
    (``{}`` for a model that is no clinic run); ``references``: the base and aligned model
    chains SafeLoRA compares."""

    def __init__(self, chain, fmt, settings: RepairConfig, run_config: dict | None = None,
                 references: dict | None = None, progress: bool = True, placement: tuple = (None, "float32")):
        self.chain = chain
        self.fmt = fmt
        self.settings = settings
        self.run_config = run_config or {}
        self.references = references or {}
        self.progress = progress
        self.device, self.dtype = placement  # where models load (an execution setting: clinic.modeling.device)
        self._model = None
        self._tok = None
        self._workspace = None

    def _load(self):
        from peft import PeftModel

        from ..modeling.chain import ModelChain, load_chain

        below, adapter = ModelChain(self.chain.base, self.chain.adapters[:-1]), self.chain.adapters[-1]
        model, tok = load_chain(below, dtype=self.dtype, device=self.device)
        self._model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        self._model.eval()  # no dropout: scores and gradients are deterministic
        self._tok = tok

    @property
    def model(self):
        """The fine-tuned model: the chain below the fine-tuning merged, its adapter trainable."""
        if self._model is None:
            self._load()
        return self._model

    @property
    def tokenizer(self):
        if self._tok is None:
            self._load()
        return self._tok

    def workspace(self, sets: dict):
        """Tokenized data sets (name -> samples) over :attr:`model`; built once, on first use."""
        if self._workspace is None:
            from ..modeling.workspace import GradientWorkspace
            from ..modeling.training import train_config

            s = self.settings
            train = train_config(None, batch_size=s.batch_size, max_length=s.max_length or 256, seed=s.seed,
                                 prompt_style=self.fmt.style, system_prompt=self.fmt.system_prompt)
            self._workspace = GradientWorkspace(self.model, self.tokenizer, train, sets)
        return self._workspace

    def linear_weights(self, which: str) -> dict[str, torch.Tensor]:
        """The weight of every linear layer of the reference model ``which`` (``base`` or
        ``aligned``), by module name."""
        from ..modeling.chain import load_chain

        if which not in self.references:
            raise ClinicError(f"no {which} model to compare with")
        ref = self.references[which]
        if (ref.base, list(ref.adapters)) == (self.chain.base, list(self.chain.adapters[:-1])):
            # the model under the fine-tuning adapter: already loaded (and the memory of one copy saved)
            return {name: layer.base_layer.weight.detach().clone() for name, layer in lora_layers(self.model)}
        model, _tok = load_chain(ref, dtype=self.dtype, device=self.device)
        weights = {name: module.weight.detach().clone() for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)}
        del model
        return weights

    def close(self) -> None:
        if self._workspace is not None:
            self._workspace.close()
