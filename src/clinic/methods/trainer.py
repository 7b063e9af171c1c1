"""The trainer every method extends: :class:`ClinicTrainer`, SFT on TRL's machinery.

A method is one module holding a config dataclass (its hyper-parameters, which become CLI
options) and a :class:`ClinicTrainer` subclass, registered by name::

    @dataclass
    class BoosterConfig(HarmfulStreamConfig):   # adds harmful_source, harmful_size: the "harmful" stream
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

from typing import ClassVar

import torch
from datasets import Dataset
from trl import SFTConfig

from ..data.formatting import PromptFormat
from ..data.samples import Sample
from ..modeling.sft import SFTData
from .config import MethodConfig
from .engines import ENGINES, check_engine, detect_engine


class ClinicTrainer(SFTData):
    """SFT on TRL's machinery (tokenization, response-only labels, collation: :class:`SFTData`),
    with hooks for the defences. The loss is the mean token cross-entropy over response tokens of
    the batch."""

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
        # before the data: a method's prepare_samples may read its config (Surgery's probe length)
        self.method_config = method_config or MethodConfig()
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         prompt_format=prompt_format, extra_data=extra_data, callbacks=callbacks)
        self.engine = check_engine(self.method_name, self.engines, detect_engine(self.accelerator.state))
        # Our losses are per-micro-batch means: let Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False

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
