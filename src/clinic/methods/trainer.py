"""The trainer every method extends: :class:`ClinicTrainer`, SFT on TRL's machinery.

A method is one module holding a config dataclass (its hyper-parameters, which become CLI
options) and a :class:`ClinicTrainer` subclass, registered by name::

    @dataclass
    class BoosterConfig(HarmfulStreamConfig):   # adds harmful_data, harmful_size: the "harmful" stream
        lam: float = field(default=5.0, metadata={"help": "regulariser weight lambda"})

    @register_method("booster", stage="align", config=BoosterConfig, summary="...")
    class BoosterTrainer(ClinicTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None): ...

(:mod:`.config` holds the settings, :mod:`.registry` the registry; docs/contributing.md walks
through adding a method.) Extension points of :class:`ClinicTrainer`:

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
- **hooks**: :mod:`clinic.modeling.hooks` finds decoder layers and attention modules
  structurally;
- **callbacks**: any ``transformers.TrainerCallback`` (the sink-count callback is one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import ClassVar

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from trl import SFTConfig, SFTTrainer

from ..data.formatting import PromptFormat, training_row
from ..data.samples import Sample
from ..errors import ClinicError
from ..modeling.parallel import rank, world_size
from .config import MethodConfig
from .engines import ENGINES, check_engine, detect_engine

logger = logging.getLogger("clinic")


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
