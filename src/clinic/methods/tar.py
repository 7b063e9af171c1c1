"""TAR-lite: the much simplified "TAR" of the T-Vaccine repository (its TAR baseline), **not**
the original TAR of Tamirisa et al. 2024 (docs/reference/algorithms.md §3.6).

The original TAR is first-order meta-learning against an inner loop of 64 simulated attack
steps, with an entropy-based tamper-resistance loss and full-parameter training. The T-Vaccine
repository's ``TarTrainer`` keeps one simulated attack step:

1. g_h = grad h(w) on a harmful batch;
2. w' = w - 0.01 * g_h  (one plain SGD attack step, fixed learning rate);
3. grad f(w') on the alignment batch (in the reference this accumulates onto g_h in ``.grad``);
4. restore w;
5. grad f(w) on the alignment batch;
6. intended: update with grad f(w) + 2 * (g_h + grad f(w')).

The reference assigns the step-6 sum to ``param.data.grad`` instead of ``param.grad``, so the
sum is lost and the update is plain SFT, grad f(w), at three times the cost.
``reproduce_bug=True`` (default) reproduces exactly that. ``reproduce_bug=False`` applies the
sum. Note that even as intended the ``+2 g_h`` term is a *descent* direction on the harmful
loss: it makes the model better at the harmful data. ``harmful_sign="minus"`` flips it
(grad f(w) + 2 (grad f(w') - g_h): ascent on the harmful loss, plus staying aligned after the
simulated attack), which is what a tamper-resistance objective would want.

Steps 1 and 3 take their gradients with ``torch.autograd.grad`` (``.grad`` untouched); the step
has one backward, of ``f(w)`` (plus, with the bug fixed, ``<w, stopgrad(weight * (sign * g_h +
grad f(w')))>``), so it runs under DDP (g_h averaged over processes before the attack step) and
DeepSpeed ZeRO-0/1/2 like Booster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ClinicError
from ..modeling.hooks import displaced
from .config import HarmfulStreamConfig
from .engines import WHOLE_WEIGHT_ENGINES
from .registry import register_method
from .shared import linear_term, loss_grads
from .trainer import ClinicTrainer

SIGNS = {"plus": 1.0, "minus": -1.0}


@dataclass
class TarLiteConfig(HarmfulStreamConfig):
    reproduce_bug: bool = field(
        default=True,
        metadata={"help": "reproduce the T-Vaccine repo's no-op (update = plain SFT gradient at 3x cost); "
                          "false: apply grad f(w) + weight*(sign*g_h + grad f(w'))"},
    )
    harmful_sign: str = field(
        default="plus",
        metadata={"help": "sign of g_h when the bug is fixed: 'plus' (as the reference intended: harmful descent) "
                          "or 'minus' (corrected: harmful ascent)"},
    )
    weight: float = field(default=2.0, metadata={"help": "weight of the post-attack terms (reference 2)"})
    attack_lr: float = field(default=0.01, metadata={"help": "learning rate of the simulated SGD attack step (reference 0.01)"})
    harmful_batch_size: int = field(default=0, metadata={"help": "harmful batch size (0: the training batch size)", "pace": True})


    def __post_init__(self):
        if self.harmful_sign not in SIGNS:
            raise ClinicError(f"unknown harmful_sign {self.harmful_sign!r}; choose one of {', '.join(SIGNS)}")
        if self.harmful_batch_size < 0:
            raise ClinicError("harmful_batch_size must be non-negative")


@register_method("tar-lite", stage="align", config=TarLiteConfig,
                 summary="T-Vaccine repo's simplified TAR (one simulated attack step; by default its no-op bug: SFT at 3x cost)",
                 engines=WHOLE_WEIGHT_ENGINES)
class TarLiteTrainer(ClinicTrainer):
    """TAR-lite as in the T-Vaccine repository, with its bug behind a flag."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        cfg: TarLiteConfig = self.method_config
        inputs, harmful, params = self.begin_harmful_step(model, inputs, cfg.harmful_batch_size)
        with self.maybe_activation_offload_context:
            loss_h, g_h = loss_grads(self, model, harmful, params, average=True)
            # the simulated SGD attack step, then the alignment gradient there
            with displaced(params, g_h, -cfg.attack_lr):
                loss_attacked, g_f_attacked = loss_grads(self, model, inputs, params)
            with self.compute_loss_context_manager():
                loss = self.lm_loss(model, inputs)
            if cfg.reproduce_bug:  # the reference's sum is lost: the update is grad f(w)
                self.backward(loss)
            else:
                sign = SIGNS[cfg.harmful_sign]
                with torch.no_grad():
                    extra = [cfg.weight * (sign * gh + gf) for gh, gf in zip(g_h, g_f_attacked)]
                self.backward(loss + linear_term(params, extra))
        metrics = self._metrics["train"]
        metrics["tar/harmful_loss"].append(float(loss_h))
        metrics["tar/loss_after_attack"].append(float(loss_attacked))
        return loss.detach() / self.current_gradient_accumulation_steps
