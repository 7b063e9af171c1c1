"""Pharmacist-like selector: per-sample scores from a one-step-unrolled bilevel objective.

**Not the paper's objective.** Pharmacist (Liu et al., arXiv 2510.10085) "trains an alignment
data selector" by bilevel optimisation to up-rank high-quality, safety-critical samples; its
objective, parameterisation and solver are not public (docs/reference/algorithms.md §4.4). This is our
instance of that description, documented in ``docs/methods/pharmacist.md``.

Candidates i = 1..n carry weights w on the simplex (uniform at the start). theta is a fresh LoRA
adapter on the model; g_i = ∇ℓ_i(theta) the gradient of sample i's alignment loss.

- inner problem, unrolled one SGD step: theta'(w) = theta − η Σ_i w_i g_i;
- attack, one simulated harmful fine-tuning step from theta':
  theta'' = theta' − α ∇L_H(theta') / ||∇L_H(theta')|| (normalised; plain ``α ∇L_H`` with
  ``normalize_attack=False``), L_H the loss on the harmful QA pairs;
- outer objective: F(w) = L_V(theta'(w)) + γ L_V(theta''(w)), L_V the loss on the trusted
  validation refusals: (a) the curated step must teach refusals, (b) and they must survive the
  attack.

Hypergradient. Since g_i does not depend on w, dL_V(theta'(w))/dw_i = −η <g_i, ∇L_V(theta')>
exactly. For the attack term we drop the Jacobian of the attack step (the Hessian of L_H and the
normalisation): dL_V(theta'')/dw_i ≈ −η <g_i, ∇L_V(theta'')>. So

    dF/dw_i ≈ −η <g_i, G>,   G = ∇L_V(theta') + γ ∇L_V(theta''),

and the score of sample i is −dF/dw_i = η <g_i, G> (bigger = more helpful), with g_i and G
compressed by the same random projection. With ``rounds > 1`` the weights take exponentiated-
gradient (mirror-descent) steps, w ∝ w · exp(τ z), z the standardised scores, and the inner step
is re-taken at the new weights (one batched weighted pass over the candidates per round). The
ranking score is the learned log-weight (logit) of each sample.
"""

from __future__ import annotations

import torch

from .base import CurationContext, SelectorOutput, register_selector
from ..modeling.workspace import GradientWorkspace
from ..modeling.gradients import global_norm


def outer_gradient(ws: GradientWorkspace, inner: list[torch.Tensor], inner_lr: float, gamma: float,
                   attack_lr: float, normalize_attack: bool = True) -> tuple[list[torch.Tensor], dict]:
    """G = ∇L_V(theta') + γ ∇L_V(theta'') with theta' = theta − inner_lr · inner (first order),
    and the objective's terms. ``ws`` is left at theta."""
    with ws.displaced(inner, -inner_lr):
        val_loss, grad = ws.mean_gradient("validation")
        info = {"val_loss_after_step": val_loss}
        if gamma > 0:
            harm_loss, harm_grad = ws.mean_gradient("harmful")
            norm = global_norm(harm_grad)
            step = attack_lr / max(norm, 1e-12) if normalize_attack else attack_lr
            with ws.displaced(harm_grad, -step):
                attacked_loss, attacked_grad = ws.mean_gradient("validation")
            grad = [g + gamma * a for g, a in zip(grad, attacked_grad)]
            info.update(harmful_loss_after_step=harm_loss, harmful_grad_norm=norm,
                        val_loss_after_attack=attacked_loss)
        else:
            attacked_loss = 0.0
        info["outer_objective"] = val_loss + gamma * attacked_loss
    return grad, info


def hypergradient(projected: torch.Tensor, projected_outer: torch.Tensor, inner_lr: float) -> torch.Tensor:
    """dF/dw_i ≈ −η <g_i, G> for every candidate (rows of ``projected``)."""
    return -inner_lr * (projected.double() @ projected_outer.double())


def standardise(x: torch.Tensor) -> torch.Tensor:
    std = x.std() if x.numel() > 1 else x.new_tensor(0.0)
    return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)


@register_selector("pharmacist", needs_model=True, order=0,
                   summary="ours (Pharmacist-like): one-step-unrolled bilevel hypergradient, validation refusals "
                           "+ robustness to a simulated harmful step")
def pharmacist(ctx: CurationContext) -> SelectorOutput:
    cfg = ctx.config
    ws = ctx.workspace
    stats = ctx.candidate_gradients
    n = ctx.n
    logits = torch.zeros(n, dtype=torch.float64)
    rounds = []
    score = torch.zeros(n, dtype=torch.float64)
    for r in range(cfg.rounds):
        weights = torch.softmax(logits, 0)
        if r == 0:  # uniform weights: the mean gradient came with the per-sample pass
            inner = [g / n for g in stats.grad_sum]
        else:
            inner = ws.mean_gradient("candidates", weights)[1]
        outer, info = outer_gradient(ws, inner, cfg.inner_lr, cfg.gamma, cfg.attack_lr, cfg.normalize_attack)
        score = -hypergradient(stats.projected, ctx.project(outer), cfg.inner_lr)
        logits = logits + cfg.weight_lr * standardise(score)
        info.update(round=r + 1, weight_entropy=float(-(weights * weights.clamp_min(1e-300).log()).sum()))
        rounds.append(info)
    return SelectorOutput(logits, {"hypergradient_score": score.tolist(), "loss": stats.losses.tolist()},
                          {"rounds": rounds})
