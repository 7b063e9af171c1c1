"""Vaccine (Huang et al. 2024): alignment under a worst-case perturbation of the hidden
embeddings (docs/reference/algorithms.md §3.2).

Objective, in min-max form::

    min_w  max_{||eps|| <= rho}  f(w; h_l <- h_l + eps_l for every layer l)

where f is the cross-entropy on the alignment (refusal) batch and h_l is the output of decoder
layer l's attention module (after the output projection, before the residual add). The inner
maximisation is one normalised gradient-ascent step in activation space:

1. forward + backward of f on the batch, recording g_l = df/dh_l for every layer (a backward
   to the activations only: ``torch.autograd.grad``, no parameter gradients);
2. one global norm G = sqrt(sum_l ||g_l||^2) over all layers, the batch and the tokens;
   eps_l = rho * g_l / (G + 1e-7);
3. forward + backward of f on the *same* batch with h_l <- h_l + eps_l (eps is a constant);
   these parameter gradients are the update.

Two passes per step. The first pass computes no parameter gradient (the reference computes and
discards them), so gradients that earlier micro-batches of an accumulation step left in ``.grad``
are untouched.

Several processes (DDP): the first pass runs on the unwrapped model (no gradient sync), G is
summed over every process's shard of the batch, so the perturbation is the one a single process
with the whole global batch would apply; the second pass is the only backward that syncs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from ..errors import ClinicError
from ..modeling.hooks import attention_modules
from .config import MethodConfig
from .engines import WHOLE_WEIGHT_ENGINES
from .registry import register_method
from .shared import vaccine_passes
from .trainer import ClinicTrainer


@dataclass
class VaccineConfig(MethodConfig):
    rho: float = field(
        default=2.0,
        metadata={"help": "perturbation intensity rho: global L2 norm of the added hidden-embedding perturbation "
                          "(Vaccine README 2; Booster's alignment script 5; T-Vaccine's script takes it as an argument)"},
    )

    def __post_init__(self):
        if self.rho < 0:
            raise ClinicError(f"rho must be non-negative, got {self.rho}")


@register_method("vaccine", stage="align", config=VaccineConfig,
                 summary="perturbation-aware alignment: hidden-embedding drift of norm rho on every layer (2 passes)",
                 engines=WHOLE_WEIGHT_ENGINES)
class VaccineTrainer(ClinicTrainer):
    """Vaccine: each step, a SAM-like ascent step on every layer's attention output, then the
    update from the perturbed forward."""

    #: keep the last step's perturbations on ``self.last_perturbation`` (tests; costs memory)
    record_perturbation: bool = False

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        modules = dict(enumerate(attention_modules(model)))
        with self.maybe_activation_offload_context:
            loss, perturbation = vaccine_passes(self, model, inputs, modules, self.method_config.rho)
        if self.record_perturbation:
            self.last_perturbation = {i: e.detach().clone() for i, e in perturbation.items()}
        return loss.detach() / self.current_gradient_accumulation_steps
