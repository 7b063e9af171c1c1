"""The settings of a training run: :class:`TrainConfig` (every method's settings, which build TRL's
``SFTConfig``; its LoRA fields are :class:`~clinic.modeling.lora.LoraFields`, declared once and
shared by training, curation and repair) and the reference presets."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from trl import SFTConfig

from ..data.formatting import PROMPT_STYLES, PromptFormat
from ..errors import ClinicError
from ..registry import Registry
from ..values import INT_MAX, check_fields
from .lora import LoraFields

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "constant", "linear", "constant_with_warmup")
# transformers renamed TrainingArguments.gradient_checkpointing to activation_checkpointing (the
# old name stays as a deprecated alias until v6); releases before the rename (5.17, the GPU
# machine's) only know the old name and reject the new one.
CHECKPOINTING_FIELD = ("activation_checkpointing" if "activation_checkpointing" in {f.name for f in dataclasses.fields(SFTConfig)}
                       else "gradient_checkpointing")


def native_cpu_bf16() -> bool:
    """Whether the CPU computes bf16 natively (oneDNN's own test: AVX-512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: absent from some builds
        return False


@dataclass
class TrainConfig(LoraFields):
    """Training settings shared by every method (the reference presets fill these in); the LoRA
    fields come from :class:`LoraFields`."""

    epochs: float = field(default=1.0, metadata={"help": "passes over the training data"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimizer steps (-1: use epochs)"})
    batch_size: int = field(default=8, metadata={"help": "per-device batch size", "range": (1, None)})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps", "range": (1, None)})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate (AdamW)", "range": (0, None), "open": "low"})
    schedule: str = field(default="cosine", metadata={"help": "learning-rate schedule", "choices": SCHEDULES})
    warmup: float = field(default=0.0, metadata={"help": "warm-up as a fraction of the steps", "range": (0, 1),
                                                  "open": "high"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "range": (0, None)})
    # at least a prompt token and a response token
    max_length: int = field(default=256, metadata={"help": "truncate samples to this many tokens", "range": (2, None)})
    bf16: bool = field(default=False, metadata={"help": "train in bfloat16 mixed precision (on a GPU, or a CPU with AMX/AVX-512-BF16)"})
    seed: int = field(default=0, metadata={"help": "seed for data order, LoRA init and sampling",
                                           "range": (0, INT_MAX)})  # within numpy's seed range
    full_ft: bool = field(default=False, metadata={"help": "full fine-tuning instead of LoRA"})
    prompt_style: str = field(default="chat", metadata={"help": "chat (tokenizer template) or alpaca",
                                                         "choices": PROMPT_STYLES})
    system_prompt: str | None = field(default=None, metadata={"help": "system prompt for the chat style"})
    logging_steps: int = field(default=5, metadata={"help": "log the loss every N steps", "range": (1, None)})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0: only the final model)",
                                                 "range": (0, None)})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward"})
    group_by_length: bool = field(default=False, metadata={
        "help": "batch samples of similar length (less padding, faster; batches are less mixed, so it is off "
                "for attacks, where harmful samples are longer than task samples)"})

    def __post_init__(self):
        """Every value is checked here, against what TRL, PEFT and torch accept, so that a bad
        one is a one-line error before any model loads (not a traceback from inside them)."""
        check_fields(self, "training setting ")  # types, choices and ranges (metadata)
        if self.max_steps == 0 or self.max_steps < -1:
            raise ClinicError(f"max_steps must be a positive step count (or -1: use epochs), got {self.max_steps}")
        if self.max_steps == -1 and self.epochs <= 0:  # trains 0 steps and calls the run finished
            raise ClinicError(f"epochs must be positive, got {self.epochs:g}")
        self.check_lora(require_targets=not self.full_ft)

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
        if self.bf16 and not (torch.cuda.is_available() or torch.backends.mps.is_available()):
            # Trainer refuses bf16 without an accelerator unless told the CPU is meant; there it
            # autocasts to bf16 too (native on CPUs with AMX or AVX-512-BF16: benchmarks/cpu_bf16.py)
            kwargs["use_cpu"] = True
            if not native_cpu_bf16():
                logger.warning("bf16 on this CPU is emulated (no AMX or AVX-512-BF16) and slower than fp32; "
                               "--no-bf16 trains in fp32")
        kwargs.update(overrides)
        return SFTConfig(**kwargs)


# The reference pipelines' settings (docs/reference/algorithms.md §3.1, §4.1, §9), listed in
# the order given here.
PRESETS = Registry("preset")
for _name, _values in {
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
}.items():
    PRESETS.register(_name, _values)


TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")


def report_to(asked: str | None = None) -> str:
    """Where training logs go (an execution setting, never hashed): ``asked`` (``--report-to``),
    else ``$CLINIC_REPORT_TO``, else ``none``; a tracker whose package is missing is a one-line
    error before anything trains. Credentials (``WANDB_API_KEY``, ``MLFLOW_TRACKING_URI``, ...) come
    from the environment, as each tracker reads them."""
    import os

    from transformers import integrations

    value = (asked or os.environ.get("CLINIC_REPORT_TO") or "none").strip()
    names = [n.strip() for n in value.split(",") if n.strip()]
    if names in ([], ["none"]):
        return "none"
    for name in names:
        if name not in TRACKERS:
            raise ClinicError(f"unknown tracker {name!r} for --report-to; choose among none, {', '.join(TRACKERS)}")
        if not getattr(integrations, f"is_{name}_available")():
            raise ClinicError(f"--report-to {name}: the {name} package is not installed (pip install {name})")
    return ",".join(names)


def train_config(preset: str | None = None, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a preset plus overrides (unknown keys are errors)."""
    values: dict[str, Any] = {}
    if preset:
        values.update(PRESETS.get(preset))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in overrides.items():
        if key not in names:
            raise ClinicError(f"unknown training setting {key!r}; valid: {', '.join(sorted(names))}")
        if value is not None:
            values[key] = value
    return TrainConfig(**values)


