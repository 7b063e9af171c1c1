"""Gradient helpers shared by the methods that take extra gradients inside a step (Booster, TAR-lite)."""

from __future__ import annotations

import torch

from ..modeling.parallel import average_, unwrap
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
