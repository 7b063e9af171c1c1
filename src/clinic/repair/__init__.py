"""Post-fine-tuning repair (``clinic repair``): change a LoRA fine-tuned model so that it is safe again.

- :mod:`.stage`: :func:`run_repair` (the stage), the experiment runner's entry points and the CLI command;
- :mod:`.base`: the repair-method registry, :class:`RepairConfig` and the context a method gets;
- :mod:`.safelora`, :mod:`.antidote`, :mod:`.panacea`: the methods (docs/methods/*.md).
"""

# The stage is not imported here: it runs models through clinic.pipeline (a layer above the
# methods), and a package import must not pull in a higher layer (tests/test_layers.py).
from .base import RepairConfig, get_repair, repair_methods

__all__ = ["RepairConfig", "get_repair", "repair_methods"]
