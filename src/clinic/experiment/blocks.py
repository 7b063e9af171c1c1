"""The experiment file's curate, align and finetune blocks, declared once: each block is a
dataclass whose fields are its keys, with their defaults and help. The checker
(:mod:`.spec`, ``settings_keys``) derives the allowed keys from these fields and the plan (:mod:`.plan`,
:mod:`clinic.experiment.attacks`) takes its defaults from them, so a key is added in one place.

:class:`ExecutionConfig` is the one block that says how and where the experiment runs, not what it
computes: it never enters a stage's hash, and a resume accepts a file whose only change is there.

These blocks are no command's options (the blocks that are, ``train``, ``evaluate``, ``sink`` and
``repair``, take the fields of ``TrainConfig``, ``EvalConfig``, ``SinkConfig`` and
``RepairConfig`` directly). The values stay plain mappings in :class:`.spec.Experiment`: a
stage's hash is built from what the file gives, so an absent key keeps older hashes as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..evaluation.vllm_backend import MODES as VLLM_MODES
from ..modeling.device import DTYPES


@dataclass
class CurateBlock:
    selector: str = field(default="pharmacist", metadata={"help": "curation selector (clinic curate --selector)"})
    ratio: float | None = field(default=None, metadata={"help": "fraction of the candidates to keep"})
    k: int | None = field(default=None, metadata={"help": "or: how many candidates to keep"})
    options: dict | None = field(default=None, metadata={"help": "the selector's settings (CurateConfig fields)"})


@dataclass
class _TrainingBlock:
    """What the align and finetune blocks share: the methods, a preset and TrainConfig overrides."""

    methods: tuple = field(default=("sft",), metadata={"help": "methods (a name, or a mapping with its options)"})
    preset: str = field(default="", metadata={"help": "training preset"})  # each block sets its own default
    train: dict | None = field(default=None, metadata={"help": "TrainConfig overrides"})


@dataclass
class AlignBlock(_TrainingBlock):
    preset: str = field(default="cpu-align", metadata={"help": "training preset"})
    source: str = field(default="refusals", metadata={"help": "alignment data (QA rows)"})
    n: int | None = field(default=None, metadata={"help": "alignment rows (default: all)"})
    selection: str = field(default="random", metadata={"help": "which n rows: random or first"})
    helpful: str | None = field(default=None, metadata={"help": "helpful dataset mixed into the alignment data"})
    helpful_n: int | None = field(default=None, metadata={"help": "how many helpful rows (with helpful)"})


@dataclass
class FinetuneBlock(_TrainingBlock):
    preset: str = field(default="cpu-finetune", metadata={"help": "training preset"})
    tasks: tuple = field(default=("sst2",), metadata={"help": "fine-tuning tasks"})
    n: int = field(default=1000, metadata={"help": "task samples per fine-tune"})
    poison_ratios: tuple = field(default=(0.1,), metadata={"help": "harmful shares p of the fine-tuning data"})
    harmful_source: str = field(default="beavertails-harmful", metadata={"help": "harmful QA rows mixed in"})
    selection: str = field(default="random", metadata={"help": "which task rows: random or first"})
    aligned_with: tuple | None = field(default=None, metadata={"help": "only these aligned models (labels)"})
    attack_space: dict | None = field(default=None, metadata={"help": "adaptive attacker: lists of lr, epochs, ..."})
    repaired: bool = field(default=True, metadata={"help": "whether the repair block repairs this block's fine-tunes"})
    search: dict | None = field(default=None, metadata={"help": "budgeted Optuna search over the attack space"})


EXECUTORS = ("inprocess", "local", "submitit")


@dataclass
class ExecutionConfig:
    """How and where stages run, never what they compute: the experiment file's ``execution``
    block and the commands' execution options (``--device``, ...) under the same names; no field
    here ever enters a stage's hash."""

    store: str | None = field(default=None, metadata={
        "help": "stage store shared between experiments (as --store; relative to the current folder)"})
    device: str = field(default="auto", metadata={
        "help": "where stages compute: auto (CUDA, else MPS, else the CPU), cpu, cuda, cuda:N or mps"})
    dtype: str = field(default="auto", metadata={
        "help": "dtype models are loaded in for evaluation, sink, curation and repair (auto: bf16 on a GPU that "
                "computes it, else float32; training precision is the training setting bf16)", "choices": DTYPES})
    generation_batch: int | None = field(default=None, metadata={
        "help": "prompts per generation batch (default: the evaluation's batch_size on the CPU, at least 64 on a GPU)",
        "range": (1, None)})
    vllm_mode: str = field(default="auto", metadata={
        "help": "with backend vllm: merged (the chain saved merged) or lora (its one adapter as a LoRA request); auto: "
                "lora where possible", "choices": VLLM_MODES})
    tensor_parallel: int | None = field(default=None, metadata={
        "help": "with backend vllm: GPUs to split the model over (default: every visible one)", "range": (1, None)})
    enforce_eager: bool = field(default=False, metadata={"help": "with backend vllm: no CUDA graphs (slower)"})
    report_to: str | None = field(default=None, metadata={
        "help": "where training logs its losses: none, tensorboard, wandb, mlflow or trackio (comma-separated for "
                "several; default: $CLINIC_REPORT_TO, else none)"})
    executor: str = field(default="inprocess", metadata={
        "help": "how stages run: in this process, as local subprocesses, or as SLURM jobs through submitit",
        "choices": EXECUTORS})
    resources: str | None = field(default=None, metadata={
        "help": "the executor file: resources per stage kind (GPUs, CPUs, memory, time, partition)"})

    def __post_init__(self):
        from ..values import check_fields

        check_fields(self, "execution setting ")

    def stage_options(self) -> dict:
        """What :func:`clinic.stages.execute` takes of it."""
        keys = ("device", "dtype", "generation_batch", "vllm_mode", "tensor_parallel", "enforce_eager", "report_to")
        return {k: getattr(self, k) for k in keys}


def default(cls, key: str) -> Any:
    """A block key's default, as the plan uses it (tuples as lists)."""
    value = next(f.default for f in fields(cls) if f.name == key)
    return list(value) if isinstance(value, tuple) else value


def keys_markdown() -> str:
    """The keys of the three blocks as a Markdown table (docs/experiments.md shows it; a test
    checks that the page matches)."""
    lines = ["| block | key | default | meaning |", "|---|---|---|---|"]
    for name, cls in (("curate", CurateBlock), ("align", AlignBlock), ("finetune", FinetuneBlock),
                      ("execution", ExecutionConfig)):
        for f in fields(cls):
            value = default(cls, f.name)
            shown = "—" if value is None else f"`{value}`"
            lines.append(f"| {name} | `{f.name}` | {shown} | {f.metadata['help']} |")
    return "\n".join(lines)
