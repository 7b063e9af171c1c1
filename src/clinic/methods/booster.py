"""Booster (Huang et al. 2024): attenuate the harmful perturbation a later fine-tuner would
apply (docs/reference/algorithms.md §3.5).

    min_w  f(w) + lambda * ( h(w) - h(w - alpha * grad h(w) / ||grad h(w)||) )

f: CE on the alignment batch; h: CE on a harmful batch. One step (3 passes):

1. g_h = grad h(w) on the harmful batch;
2. w' = w - alpha * g_h / (||g_h|| + 1e-7), the norm global over every trainable parameter;
3. g_h' = grad h(w') on the same harmful batch; w restored exactly (a saved copy, not w' + step);
4. g_a = grad f(w) on the alignment batch;
5. the update uses g_a + lambda * (g_h - g_h')  (first order: no Hessian term through w').

Interactions: gradient clipping happens in Trainer after ``training_step``, so it clips the
combined gradient (as in the reference). Gradient checkpointing (non-reentrant) is fine: each
pass finishes its backward (and so its recomputation) before the weights move. g_h and g_h' are
taken with ``torch.autograd.grad``, so ``.grad`` (and what earlier micro-batches of an
accumulation step left there) is untouched; the update comes out of the step's one backward, of
``f(w) + lambda * <w, stopgrad(g_h - g_h')>`` (its gradient is exactly the update above).
``perturb_aware=True`` replaces pass 4 by a Vaccine step on the alignment batch (5 passes).

Several processes (DDP): g_h is averaged over the processes before the step (every process
moves to the same w', as one process with the global harmful batch would); g_h' and g_a are
averaged by the one synced backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ClinicError
from ..modeling.hooks import attention_modules, displaced, grad_norm
from .config import HarmfulStreamConfig
from .engines import WHOLE_WEIGHT_ENGINES
from .registry import register_method
from .shared import linear_term, loss_grads
from .trainer import ClinicTrainer
from .shared import vaccine_passes


@dataclass
class BoosterConfig(HarmfulStreamConfig):
    lam: float = field(default=5.0, metadata={"help": "lambda: weight of the harmful-perturbation regulariser"})
    alpha: float = field(default=0.1, metadata={"help": "step size of the simulated (normalised) harmful step"})
    harmful_batch_size: int = field(default=0, metadata={
        "help": "harmful batch size (0: the training batch size; reference 10)", "pace": True})
    perturb_aware: bool = field(default=False, metadata={
        "help": "use a Vaccine step for the alignment gradient (5 passes)", "pace": True})
    rho: float = field(default=2.0, metadata={"help": "Vaccine rho when perturb_aware is on"})
    harmful_size: int = field(default=2000, metadata={"help": "number of harmful pairs (Booster's scripts: 5000)"})


    def __post_init__(self):
        if self.harmful_batch_size < 0:
            raise ClinicError("harmful_batch_size must be non-negative")
        for name in ("lam", "alpha", "rho"):  # a weight, a step size and a radius: negative flips the method
            if getattr(self, name) < 0:
                raise ClinicError(f"booster: {name} must be non-negative, got {getattr(self, name)}")


@register_method("booster", stage="align", config=BoosterConfig,
                 summary="alignment + penalty on how much one normalised harmful step lowers the harmful loss (3 passes)",
                 engines=WHOLE_WEIGHT_ENGINES)
class BoosterTrainer(ClinicTrainer):
    """Booster: g_a + lambda (g_h - g_h') with g_h' the harmful gradient after a normalised
    harmful step."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        cfg: BoosterConfig = self.method_config
        inputs, harmful, params = self.begin_harmful_step(model, inputs, cfg.harmful_batch_size)
        with self.maybe_activation_offload_context:
            loss_h, g_h = loss_grads(self, model, harmful, params, average=True)
            norm = grad_norm(g_h)
            # one normalised harmful step, then the harmful gradient there
            with displaced(params, g_h, -cfg.alpha / (norm.item() + 1e-7)):
                loss_h2, g_h2 = loss_grads(self, model, harmful, params)
            with torch.no_grad():
                penalty = [cfg.lam * (a - b) for a, b in zip(g_h, g_h2)]
            del g_h, g_h2

            def extra_loss():
                return linear_term(params, penalty)

            if cfg.perturb_aware:
                modules = dict(enumerate(attention_modules(model)))
                loss, _ = vaccine_passes(self, model, inputs, modules, cfg.rho, extra_loss=extra_loss)
            else:
                with self.compute_loss_context_manager():
                    loss = self.lm_loss(model, inputs)
                self.backward(loss + extra_loss())
        metrics = self._metrics["train"]
        metrics["booster/harmful_loss"].append(float(loss_h))
        metrics["booster/harmful_loss_after_step"].append(float(loss_h2))
        return loss.detach() / self.current_gradient_accumulation_steps
