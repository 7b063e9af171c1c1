"""SFT: plain supervised fine-tuning, the baseline of both stages (docs/reference/algorithms.md §3.1, §4.1).

Objective: min CE on the stage's data (refusals when aligning, the user's data when
fine-tuning). One forward and one backward pass per step.
"""

from .engines import ENGINES
from .registry import register_method
from .trainer import ClinicTrainer


@register_method("sft", stage=("align", "finetune"), summary="plain supervised fine-tuning (1 pass per step)",
                 engines=ENGINES)
class SFTMethodTrainer(ClinicTrainer):
    """Plain SFT: the ClinicTrainer as it is."""
