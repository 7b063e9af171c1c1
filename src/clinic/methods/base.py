"""The trainer every method extends, the training settings, and the method registry.

A method is one module holding a config dataclass (its hyper-parameters, which become CLI
options) and a :class:`ClinicTrainer` subclass, registered by name::

    @dataclass
    class BoosterConfig(MethodConfig):
        lam: float = field(default=5.0, metadata={"help": "regulariser weight lambda"})
        streams = {"harmful": ("harmful_data", "harmful_size")}   # extra data, see below
        harmful_data: str = "beavertails-harmful"
        harmful_size: int = 200

    @register_method("booster", stage="align", config=BoosterConfig, summary="...")
    class BoosterTrainer(ClinicTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None): ...

Extension points of :class:`ClinicTrainer`:

- **extra data streams**: a config's ``streams`` maps a stream name to the names of its
  (source, size) fields; the pipeline loads those samples, the trainer tokenizes them with the
  same TRL machinery and prompt format as the main data, and :meth:`ClinicTrainer.next_batch`
  yields collated, shuffled, endlessly cycling batches on the right device (with several
  processes, each takes its own slice of one global batch, as the main data is sharded);
- **loss**: override :meth:`ClinicTrainer.compute_loss` (``self.lm_loss`` is the plain CE) for
  single-pass methods (Surgery, Lisa);
- **custom step**: override ``training_step`` and call :meth:`ClinicTrainer.backward` once for
  multi-pass methods (Vaccine, Booster, ...); intermediate passes take their gradients with
  ``torch.autograd.grad`` on ``unwrap(model)`` (see :mod:`clinic.methods.engines`), so that a
  step runs under DDP and DeepSpeed (one gradient sync, one optimizer step);
- **engines**: ``register_method(..., engines=...)`` declares where a method can run (DDP, FSDP,
  DeepSpeed ZeRO stages); the trainer refuses any other engine at start;
- **hooks**: :mod:`clinic.methods.hooks` finds decoder layers and attention modules
  structurally;
- **callbacks**: any ``transformers.TrainerCallback`` (the sink-count callback is one).
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from trl import SFTConfig, SFTTrainer

from ..data.formatting import PROMPT_STYLES, PromptFormat, training_row
from ..data.samples import Sample
from ..errors import ClinicError
from ..modeling.parallel import rank, world_size
from ..models import LoraSettings
from ..values import INT_MAX, check_range, coerce, coerce_fields
from .engines import ENGINES, check_engine, detect_engine

logger = logging.getLogger("clinic")
STAGES = ("align", "finetune")
SCHEDULES = ("cosine", "constant", "linear", "constant_with_warmup")
# transformers renamed TrainingArguments.gradient_checkpointing to activation_checkpointing (the
# old name stays as a deprecated alias until v6); releases before the rename (5.17, the GPU
# machine's) only know the old name and reject the new one.
CHECKPOINTING_FIELD = ("activation_checkpointing" if "activation_checkpointing" in {f.name for f in dataclasses.fields(SFTConfig)}
                       else "gradient_checkpointing")


# --------------------------------------------------------------------------------------------
# settings


@dataclass
class TrainConfig:
    """Training settings shared by every method (the reference presets fill these in)."""

    epochs: float = field(default=1.0, metadata={"help": "passes over the training data"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: use epochs)"})
    batch_size: int = field(default=8, metadata={"help": "per-device batch size"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate (AdamW)"})
    schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule", "choices": SCHEDULES})
    warmup: float = field(default=0.0, metadata={"help": "warm-up as a fraction of the steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_length: int = field(default=256, metadata={"help": "truncate samples to this many tokens"})
    bf16: bool = field(default=False, metadata={"help": "train in bfloat16 mixed precision (GPU)"})
    seed: int = field(default=0, metadata={"help": "seed for data order, LoRA init and sampling"})
    full_ft: bool = field(default=False, metadata={"help": "full fine-tuning instead of LoRA"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the reference scripts use 1)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_targets: str = field(
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        metadata={"help": "comma-separated module names that get LoRA adapters"},
    )
    prompt_style: str = field(default="chat", metadata={"help": "chat (tokenizer template) or alpaca",
                                                         "choices": PROMPT_STYLES})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt for the chat style"})
    logging_steps: int = field(default=5, metadata={"help": "log the loss every N steps"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only the final model)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    group_by_length: bool = field(default=False, metadata={
        "help": "batch samples of similar length (less padding, faster; batches are less mixed, so it is off "
                "for attacks, where harmful samples are longer than task samples)"})

    def __post_init__(self):
        """Every value is checked here, against what TRL, PEFT and torch accept, so that a bad
        one is a one-line error before any model loads (not a traceback from inside them)."""
        coerce_fields(self, "training setting ")
        if self.schedule not in SCHEDULES:
            raise ClinicError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ClinicError("batch size and gradient accumulation must be at least 1")
        if self.lr <= 0:
            raise ClinicError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ClinicError(f"warm-up must be a fraction in [0, 1), got {self.warmup}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ClinicError(f"max_steps must be a positive step count (or -1: use epochs), got {self.max_steps}")
        if self.max_steps == -1 and self.epochs <= 0:  # trains 0 steps and calls the run finished
            raise ClinicError(f"epochs must be positive, got {self.epochs:g}")
        check_range(self.weight_decay, "weight_decay", 0)
        check_range(self.max_length, "max_length", 2)  # a prompt token and a response token
        check_range(self.seed, "seed", 0, INT_MAX)  # within numpy's seed range
        check_range(self.lora_r, "lora_r", 1)
        check_range(self.lora_alpha, "lora_alpha", 0, low_open=True)
        check_range(self.lora_dropout, "lora_dropout", 0, 1, high_open=True)
        check_range(self.logging_steps, "logging_steps", 1)
        check_range(self.save_steps, "save_steps", 0)
        if not [t for t in self.lora_targets.split(",") if t.strip()] and not self.full_ft:
            raise ClinicError("lora_targets must name at least one module")
        if self.prompt_style not in PROMPT_STYLES:
            raise ClinicError(f"unknown prompt style {self.prompt_style!r}; choose one of {', '.join(PROMPT_STYLES)}")

    def lora(self) -> LoraSettings:
        targets = [t.strip() for t in self.lora_targets.split(",") if t.strip()]
        return LoraSettings(self.lora_r, self.lora_alpha, self.lora_dropout, targets)

    def prompt_format(self) -> PromptFormat:
        return PromptFormat(self.prompt_style, self.system_prompt)

    def sft_config(self, output_dir: str, **overrides) -> SFTConfig:
        kwargs: dict[str, Any] = dict(
            output_dir=output_dir,
            num_train_epochs=self.epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.batch_size,
            gradient_accumulation_steps=self.grad_accum,
            learning_rate=self.lr,
            lr_scheduler_type=self.schedule,
            warmup_steps=self.warmup,
            weight_decay=self.weight_decay,
            max_length=self.max_length,
            bf16=self.bf16,
            seed=self.seed,
            data_seed=self.seed,
            logging_steps=self.logging_steps,
            save_strategy="steps" if self.save_steps > 0 else "no",
            save_steps=self.save_steps if self.save_steps > 0 else 500,
            save_only_model=True,
            report_to="none",
            eval_strategy="no",
            completion_only_loss=True,
            remove_unused_columns=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
            train_sampling_strategy="group_by_length" if self.group_by_length else "random",
            disable_tqdm=False,
            # TRL's fused LM head is swapped for a plain forward (see lm_loss); no padding-free.
            padding_free=False,
        )
        kwargs[CHECKPOINTING_FIELD] = self.gradient_checkpointing
        kwargs.update(overrides)
        return SFTConfig(**kwargs)


# The reference pipelines' settings (docs/reference/algorithms.md §3.1, §4.1, §9).
PRESETS: dict[str, dict[str, Any]] = {
    "tvaccine-align": dict(epochs=20, batch_size=10, lr=1e-3, schedule="cosine", warmup=0.1, weight_decay=0.1,
                           max_length=200, bf16=True, lora_r=8, lora_alpha=1, lora_dropout=0.1, prompt_style="alpaca"),
    "tvaccine-finetune": dict(epochs=20, batch_size=10, lr=1e-5, schedule="cosine", warmup=0.1, weight_decay=0.1,
                              max_length=200, bf16=True, lora_r=8, lora_alpha=1, lora_dropout=0.1, prompt_style="alpaca"),
    "booster-align": dict(epochs=20, batch_size=10, lr=5e-4, schedule="constant", warmup=0.0, weight_decay=0.1,
                          max_length=256, bf16=True, lora_r=32, lora_alpha=4, lora_dropout=0.0,
                          lora_targets="q_proj,k_proj,v_proj", prompt_style="alpaca"),
    "surgery-finetune": dict(epochs=5, batch_size=10, lr=5e-6, schedule="constant", warmup=0.0, weight_decay=0.0,
                             max_length=1024, bf16=True, full_ft=True, prompt_style="chat",
                             system_prompt="You are a helpful assistant."),
    # Small settings that run on a 2-core CPU in minutes (docs/reference/findings.md, F1).
    "cpu-align": dict(epochs=1, batch_size=8, lr=5e-4, schedule="cosine", warmup=0.0, max_length=160,
                      lora_r=8, lora_alpha=16, group_by_length=True),
    "cpu-finetune": dict(epochs=1, batch_size=8, lr=2e-4, schedule="constant", warmup=0.0, max_length=160,
                         lora_r=8, lora_alpha=16),
    # The calibrated small-scale protocol on SmolLM2-135M (docs/protocol.md, cell A): a deeper
    # alignment (use it on 1,024 refusals) and a gentle, long attack (256 task samples).
    "protocol-align": dict(epochs=2, batch_size=8, lr=5e-4, schedule="cosine", warmup=0.0, max_length=128,
                           lora_r=8, lora_alpha=16, group_by_length=True),
    "protocol-attack": dict(epochs=5, batch_size=8, lr=5e-5, schedule="constant", warmup=0.0, max_length=128,
                            lora_r=8, lora_alpha=16),
}


def train_config(preset: str | None = None, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a preset plus overrides (unknown keys are errors)."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in PRESETS:
            raise ClinicError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in overrides.items():
        if key not in names:
            raise ClinicError(f"unknown training setting {key!r}; valid: {', '.join(sorted(names))}")
        if value is not None:
            values[key] = value
    return TrainConfig(**values)


@dataclass
class MethodConfig:
    """Hyper-parameters of a method. Subclasses add fields (with ``metadata={"help": ...}``).

    ``streams`` maps an extra data stream's name to the names of the fields holding its source
    and its size, e.g. ``{"harmful": ("harmful_data", "harmful_size")}``.
    """

    streams: ClassVar[dict[str, tuple[str, str]]] = {}

    def stream_specs(self) -> dict[str, tuple[str, int | None]]:
        return {name: (getattr(self, src), getattr(self, size)) for name, (src, size) in self.streams.items()}


# --------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class MethodSpec:
    name: str
    stages: tuple[str, ...]
    config: type[MethodConfig]
    trainer: type[ClinicTrainer]
    summary: str
    engines: tuple[str, ...] = ENGINES  # the multi-process engines it runs under


METHODS: dict[str, MethodSpec] = {}


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
        METHODS[name] = MethodSpec(name, stages, config, trainer_cls, summary or (trainer_cls.__doc__ or "").strip(),
                                   tuple(engines))
        trainer_cls.method_name, trainer_cls.engines = name, tuple(engines)
        return trainer_cls

    return wrap


def methods_for(stage: str) -> dict[str, MethodSpec]:
    from . import load_all  # registration happens on import

    load_all()
    return {name: spec for name, spec in sorted(METHODS.items()) if stage in spec.stages}


def get_method(name: str, stage: str) -> MethodSpec:
    valid = methods_for(stage)
    if name not in valid:
        if name in METHODS:  # a method of the other stage
            other, a = METHODS[name].stages[0], {"align": "an align", "finetune": "a finetune"}
            raise ClinicError(f"{name!r} is {a[other]} method, not {a[stage]} method (run `clinic {other} --method {name}`); "
                              f"{stage} methods: {', '.join(valid)}")
        raise ClinicError(f"unknown {stage} method {name!r}; choose one of {', '.join(valid)}")
    return valid[name]


def method_config(spec: MethodSpec, **values) -> MethodConfig:
    names = {f.name for f in dataclasses.fields(spec.config)}
    unknown = set(values) - names
    if unknown:
        raise ClinicError(f"unknown option(s) {', '.join(sorted(unknown))} for method {spec.name!r}")
    hints = typing.get_type_hints(spec.config)
    cfg = spec.config(**{k: coerce(v, hints[k], f"{spec.name} option {k}") for k, v in values.items() if v is not None})
    for _source, size_field in spec.config.streams.values():  # an empty stream fails only inside the trainer
        size = getattr(cfg, size_field)
        if size is not None and size < 1:
            raise ClinicError(f"{spec.name} option {size_field} must be at least 1, got {size}")
    return cfg


# --------------------------------------------------------------------------------------------
# the trainer


class ClinicTrainer(SFTTrainer):
    """SFT on TRL's machinery (tokenization, response-only labels, collation), with hooks for
    the defences. The loss is the mean token cross-entropy over response tokens of the batch."""

    method_name: ClassVar[str] = "sft"  # set by register_method
    engines: ClassVar[tuple[str, ...]] = ENGINES

    def __init__(
        self,
        *,
        model,
        args: SFTConfig,
        train_dataset: Dataset,
        processing_class,
        method_config: MethodConfig | None = None,
        prompt_format: PromptFormat | None = None,
        extra_data: dict[str, list[Sample]] | None = None,
        callbacks=None,
    ):
        super().__init__(
            model=model, args=args, train_dataset=train_dataset, processing_class=processing_class, callbacks=callbacks
        )
        kept, given = len(self.train_dataset), len(train_dataset)
        if kept == 0:
            raise ClinicError(f"all {given} training samples lose their whole response when truncated to "
                              f"max_length={args.max_length} tokens; raise --max-length")
        if kept < given:
            logger.warning("%d of %d training samples were dropped: their response starts after max_length=%d "
                           "tokens", given - kept, given, args.max_length)
        self.engine = check_engine(self.method_name, self.engines, detect_engine(self.accelerator.state))
        self.method_config = method_config or MethodConfig()
        self.prompt_format = prompt_format or PromptFormat()
        # Our losses are per-micro-batch means: let Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.extra_datasets: dict[str, Dataset] = {}
        self._extra_iters: dict[str, Iterator] = {}
        for name, samples in (extra_data or {}).items():
            self.extra_datasets[name] = self.prepare_samples(samples, name)

    # -- data ---------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches from a generator of their own, seeded by ``data_seed``: the
        order must not depend on how much of the global RNG a method drew before training
        (Trainer's own LengthGroupedSampler uses the global RNG), so that every method sees
        the same batches."""
        if self.args.train_sampling_strategy != "group_by_length" or world_size() > 1:
            return super()._get_train_sampler(train_dataset)
        from transformers.trainer_pt_utils import LengthGroupedSampler

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        generator = torch.Generator().manual_seed(self.args.data_seed if self.args.data_seed is not None else self.args.seed)
        return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                    dataset=dataset, model_input_name="input_ids", generator=generator)

    def prepare_samples(self, samples: list[Sample], name: str) -> Dataset:
        """Tokenize samples exactly as the main training data is tokenized."""
        if not samples:
            raise ClinicError(f"the {name} data stream is empty")
        rows = [training_row(self.processing_class, self.prompt_format, s.instruction, s.input, s.output) for s in samples]
        dataset = Dataset.from_list(rows)
        # Shuffling is next_batch's job (seeded per stream); a new SFTConfig would reset
        # accelerate's state, so flip the flag in place.
        shuffle, self.args.shuffle_dataset = getattr(self.args, "shuffle_dataset", False), False
        try:
            return self._prepare_dataset(dataset, self.processing_class, self.args, False, None, name)
        finally:
            self.args.shuffle_dataset = shuffle

    def next_batch(self, name: str, batch_size: int | None = None, shard: bool = True) -> dict[str, torch.Tensor]:
        """The next collated batch of an extra stream, on the model's device (cycles forever).

        ``batch_size`` is per process. With several processes and ``shard``, one global batch of
        ``batch_size x processes`` rows is drawn (the same seeded order everywhere) and each
        process collates its own slice, so N processes see what one process with an N times
        larger batch sees; ``shard=False`` gives every process the same batch."""
        if name not in self.extra_datasets:
            raise ClinicError(f"method needs the data stream {name!r}, which was not supplied")
        key = f"{name}:{batch_size}:{shard}"
        for _attempt in range(2):
            if key not in self._extra_iters:
                generator = torch.Generator().manual_seed(self.args.seed + len(self._extra_iters) + 1)
                size = batch_size or self.args.per_device_train_batch_size
                parts, part = (world_size(), rank()) if shard else (1, 0)
                loader = DataLoader(
                    self.extra_datasets[name].select_columns(["input_ids", "labels"]),
                    batch_size=size * parts,
                    shuffle=True,
                    generator=generator,
                    collate_fn=self.data_collator if parts == 1 else _SliceCollator(self.data_collator, size, parts, part),
                )
                self._extra_iters[key] = iter(loader)
            try:
                return self._prepare_inputs(next(self._extra_iters[key]))
            except StopIteration:
                del self._extra_iters[key]
        raise RuntimeError("unreachable")

    # -- loss and steps -----------------------------------------------------------------------

    def lm_loss(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy over the response tokens of ``inputs``."""
        inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels", "position_ids")}
        return model(**inputs, use_cache=False).loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.lm_loss(model, inputs)
        return (loss, None) if return_outputs else loss

    def backward(self, loss: torch.Tensor) -> None:
        """Backward for custom steps, scaled for gradient accumulation like Trainer's own. Call it
        once per step: it is where DDP syncs gradients and DeepSpeed steps its optimizer."""
        kwargs = {"scale_wrt_gas": False} if self.engine.startswith("zero") else {}  # as Trainer.training_step
        self.accelerator.backward(loss / self.current_gradient_accumulation_steps, **kwargs)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def begin_harmful_step(self, model, inputs, harmful_batch_size: int = 0):
        """The start of a custom step that also uses harmful data (Booster, TAR-lite): train mode,
        the prepared inputs, the next harmful batch (0: the training batch size) and the trainable
        parameters."""
        model.train()
        harmful = self.next_batch("harmful", harmful_batch_size or None)
        return self._prepare_inputs(inputs), harmful, self.trainable_parameters()


class _SliceCollator:
    """Collate process ``part``'s slice of a global batch drawn for ``parts`` processes (a short
    last batch is filled up cyclically, so that every process gets ``size`` rows)."""

    def __init__(self, collate, size: int, parts: int, part: int):
        self.collate, self.size, self.parts, self.part = collate, size, parts, part

    def __call__(self, rows: list) -> dict:
        need = self.size * self.parts
        rows = [rows[i % len(rows)] for i in range(need)]
        return self.collate(rows[self.part * self.size:(self.part + 1) * self.size])
