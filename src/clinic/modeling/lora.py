"""The LoRA adapter's settings, declared once (:class:`LoraFields`): training, curation and repair
all take them from here. Light on purpose (no torch): settings dataclasses import it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ClinicError
from ..settings import LORA_TARGETS


@dataclass
class LoraFields:
    """The LoRA adapter's settings, declared once. Each field names the ``peft.LoraConfig``
    argument it sets (``metadata["peft"]``), so a field added here reaches the adapter of every
    stage that trains or scores one (align, finetune, curate, and through the fine-tuning's
    adapter, repair). A field added after results were published carries ``metadata["since"]``:
    at its default it stays out of the stage hashes (:func:`clinic.values.hashed`)."""

    lora_r: int = field(default=8, metadata={"help": "LoRA rank", "peft": "r", "range": (1, None)})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the reference scripts use 1)",
                                                      "peft": "lora_alpha", "range": (0, None), "open": "low"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout", "peft": "lora_dropout", "range": (0, 1),
                                                       "open": "high"})
    lora_targets: str = field(default=",".join(LORA_TARGETS), metadata={
        "help": "comma-separated module names that get LoRA adapters", "peft": "target_modules"})

    def lora_targets_list(self) -> list[str]:
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]

    def check_lora(self, require_targets: bool = True) -> None:
        """What the field metadata cannot say: at least one target module (LoRA training)."""
        if require_targets and not self.lora_targets_list():
            raise ClinicError("lora_targets must name at least one module")

    def lora(self) -> LoraFields:
        """The LoRA part alone (what :func:`clinic.modeling.models.attach_lora` takes)."""
        return LoraFields(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LoraFields)})

    def to_peft(self):
        """The ``peft.LoraConfig`` of these settings: every field, under its ``peft`` name."""
        from peft import LoraConfig

        values = {f.metadata["peft"]: getattr(self, f.name) for f in dataclasses.fields(LoraFields)}
        values["target_modules"] = self.lora_targets_list()
        return LoraConfig(task_type="CAUSAL_LM", **values)
