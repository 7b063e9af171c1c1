"""Helpers shared by several methods: the gradients some take inside a step (Booster, TAR-lite)
and Vaccine's two passes, which Booster and T-Vaccine reuse (a method module never imports
another method's module)."""

from __future__ import annotations

import torch
from torch import nn

from ..modeling.hooks import capture_outputs, perturb_outputs, put_back_grads, record_output_grads, squared_norm, take_grads
from ..modeling.parallel import all_reduce_sum_, average_, unwrap, world_size
from .trainer import ClinicTrainer


def loss_grads(trainer: ClinicTrainer, model, batch, params: list[torch.nn.Parameter],
               average: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(loss, gradients of ``params``) of the LM loss on ``batch`` (not scaled for gradient
    accumulation), with ``torch.autograd.grad`` on the unwrapped model: ``.grad`` is untouched and
    no DDP sync or DeepSpeed gradient hook runs. ``average``: averaged over the processes."""
    with trainer.compute_loss_context_manager():
        loss = trainer.lm_loss(unwrap(model), batch)
    found = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(found, params)]
    if average:
        average_(grads)
    return loss.detach(), grads


def linear_term(params: list[torch.nn.Parameter], directions: list[torch.Tensor]) -> torch.Tensor:
    """``sum_p <p, d_p>`` with the directions constant: its gradient w.r.t. each ``p`` is ``d_p``
    (how a precomputed gradient joins a step's one backward)."""
    return sum((p * d.to(p.dtype)).sum().float() for p, d in zip(params, directions))


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
