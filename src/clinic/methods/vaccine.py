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

import torch
from torch import nn

from ..errors import ClinicError
from ..modeling.hooks import (
    attention_modules,
    capture_outputs,
    perturb_outputs,
    put_back_grads,
    record_output_grads,
    squared_norm,
    take_grads,
)
from ..modeling.parallel import all_reduce_sum_, unwrap, world_size
from .config import MethodConfig
from .engines import WHOLE_WEIGHT_ENGINES
from .registry import register_method
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


def perturbation_from_grads(grads: dict[int, torch.Tensor], rho: float, eps: float = 1e-7,
                            inplace: bool = False) -> dict[int, torch.Tensor]:
    """eps_l = rho * g_l / (G + 1e-7) with G the global L2 norm over all the given layers
    (accumulated in fp32 or wider, :func:`squared_norm`) and over every process's part of the batch.
    ``inplace`` scales the given tensors instead of copying them.

    Under n processes each one's g_l is the gradient of its own mean loss, n times its share of the
    gradient of the global batch's mean loss; dividing by n first makes G, and so the effect of the
    1e-7, exactly what one process with the global batch computes (without it the DDP perturbation
    was off by a relative ~1e-7 / G)."""
    if not grads:
        return {}
    n = world_size()
    total = all_reduce_sum_(squared_norm(grads.values()) / n**2).sqrt()
    out = {}
    for i, g in grads.items():
        scale = (rho / (total.to(g.device) + eps) / n).to(g.dtype)
        out[i] = g.mul_(scale) if inplace else g * scale
    return out


def _reentrant_checkpointing(trainer) -> bool:
    for name in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"):
        if (getattr(trainer.args, name, None) or {}).get("use_reentrant"):
            return True
    return False


def activation_grads(trainer: ClinicTrainer, model, inputs, modules: dict[int, nn.Module]) -> dict[int, torch.Tensor]:
    """g_l = d loss / d (output of ``modules[l]``) on ``inputs``, for every module whose output
    is in the graph. ``torch.autograd.grad`` w.r.t. the outputs only: backward stops at the
    earliest of them and computes no parameter gradient (``.grad`` is left alone). Under
    reentrant checkpointing (which cannot do that) a full backward with tensor hooks is used.
    The pass runs on the unwrapped model: no DDP gradient sync for it."""
    grads: dict[int, torch.Tensor] = {}
    model = unwrap(model)
    if _reentrant_checkpointing(trainer):
        stash = take_grads(model)
        with record_output_grads(modules, grads):
            with trainer.compute_loss_context_manager():
                loss = trainer.lm_loss(model, inputs)
            trainer.backward(loss)
        take_grads(model)
        put_back_grads(stash)
        return grads
    outputs: dict[int, torch.Tensor] = {}
    with capture_outputs(modules, outputs):
        with trainer.compute_loss_context_manager():
            loss = trainer.lm_loss(model, inputs)
    keys = [i for i in sorted(outputs) if outputs[i].requires_grad]
    if keys:
        found = torch.autograd.grad(loss, [outputs[i] for i in keys], allow_unused=True)
        grads = {i: g.detach() for i, g in zip(keys, found) if g is not None}
    return grads


def vaccine_passes(trainer: ClinicTrainer, model, inputs, modules: dict[int, nn.Module], rho: float,
                   extra_loss=None):
    """The two passes of a Vaccine step on ``inputs``, perturbing ``modules`` only.

    Returns ``(loss of the perturbed pass, the perturbations)``; the parameter gradients of the
    perturbed pass (plus those of ``extra_loss()``, a term another method adds to this step's
    one backward) are added to ``.grad``.
    """
    grads = activation_grads(trainer, model, inputs, modules)
    perturbation = perturbation_from_grads(grads, rho, inplace=True)  # no second copy of [B, T, D] x layers
    del grads
    # Backward stays inside the context: checkpointed layers recompute their forward (and must
    # see the same perturbation) during backward.
    with perturb_outputs(modules, perturbation):
        with trainer.compute_loss_context_manager():
            loss = trainer.lm_loss(model, inputs)
        trainer.backward(loss if extra_loss is None else loss + extra_loss())
    return loss, perturbation


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
