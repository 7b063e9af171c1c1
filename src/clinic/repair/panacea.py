"""Panacea (Wang et al. 2025, arXiv 2501.18100): add to the fine-tuned weights a perturbation that
raises the harmful loss while keeping the task.

Objective: over the fine-tuning adapter's parameters w, find ε with ‖ε‖₂ <= ρ maximising
J(ε) = min(h(w + ε), cap) − μ · g(w + ε), h the mean loss on harmful pairs, g the mean loss on
task samples, then keep w + ε. Solved by ``steps`` steps of normalised projected gradient ascent:
ε ← Π_ρ(ε + ρ · ∇J / ‖∇J‖), from ε = 0.

From w-yibo/Panacea (``Panacea.training_step`` in trainer.py, script/finetune/panacea_gsm8k.sh):
the perturbation is ε = ρ · ∇h(w) / ‖∇h(w)‖ over the trainable (LoRA) parameters, ρ =
``eps_rho`` = 1; the harmful loss is clipped at 5; after training, the last ε is added to the
weights (train.py, ``add_eps``). There, the fine-tuning itself is changed: each step minimises
g(w) − λ (h(w + ε) − h(w)) (λ = 0.001) so that the weights learn to make ε effective. Here the
stage comes after a fine-tuning it does not control, so only the post-fine-tuning half is
possible: ε is optimised at the fine-tuned weights. With ``steps: 1`` and ``task_weight: 0`` it
is the code's ε exactly; the task term (μ, default 1) and the extra steps stand in for what the
joint training did to keep the task (docs/methods/panacea.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import ClinicError
from ..values import check_range, coerce_fields
from .base import register_repair


@dataclass
class PanaceaConfig:
    rho: float = field(default=1.0, metadata={"help": "rho, the L2 radius of the perturbation (the reference eps_rho)"})
    steps: int = field(default=5, metadata={"help": "normalised projected gradient-ascent steps on the perturbation"})
    task_weight: float = field(default=1.0, metadata={
        "help": "mu, weight of the task loss subtracted from the objective (0: harmful loss only)"})
    loss_cap: float = field(default=5.0, metadata={
        "help": "the harmful loss is clipped at this value (as in the reference): no push beyond it"})
    harmful_source: str = field(default="beavertails-harmful", metadata={"hash_name": "harmful_data", "aliases": ("harmful_data",), 
        "help": "harmful (prompt, harmful answer) pairs whose loss the perturbation raises"})
    n_harmful: int = field(default=64, metadata={"help": "harmful pairs used (the first N)"})
    task: str | None = field(default=None, metadata={
        "help": "task whose benign training rows keep the task (default: the fine-tuned run's task)"})
    n_task: int = field(default=64, metadata={"help": "benign task samples in the task term"})

    def __post_init__(self):
        coerce_fields(self, "panacea option ")
        check_range(self.rho, "panacea rho", 0.0, low_open=True)
        check_range(self.steps, "panacea steps", 1)
        check_range(self.task_weight, "panacea task_weight", 0.0)
        check_range(self.loss_cap, "panacea loss_cap", 0.0, low_open=True)
        check_range(self.n_harmful, "panacea n_harmful", 1)
        check_range(self.n_task, "panacea n_task", 1)
        if self.task is not None:
            from ..data.tasks import get_task

            get_task(self.task)


def task_samples(cfg: PanaceaConfig, run_config: dict, seed: int):
    """Benign samples of the fine-tuning task (``cfg.task``, else the fine-tuned run's task or data file)."""
    from ..data.mixture import build_attack_set, take_qa

    data = run_config.get("data") or {}
    if cfg.task or data.get("task"):
        return build_attack_set(cfg.task or data["task"], cfg.n_task, 0.0, seed).samples
    if data.get("source") and not data.get("columns"):
        return take_qa(data["source"], cfg.n_task, seed, "random")[0]
    raise ClinicError("panacea keeps the task with task samples, and the fine-tuned model names no task: "
                      "pass --task NAME (or --task-weight 0)")


def objective_gradient(ws, cfg: PanaceaConfig) -> tuple[float, float, list[torch.Tensor]]:
    """(h, g, ∇J) at the workspace's current parameters; ∇J = ∇min(h, cap) − μ ∇g."""
    h, grad_h = ws.mean_gradient("harmful")
    grads = [g.clone() if h < cfg.loss_cap else torch.zeros_like(g) for g in grad_h]
    g = float("nan")
    if cfg.task_weight > 0:
        g, grad_g = ws.mean_gradient("task")
        for acc, gg in zip(grads, grad_g):
            acc -= cfg.task_weight * gg
    return h, g, grads


@register_repair("panacea", config=PanaceaConfig,
                 summary="add a bounded perturbation that raises the harmful loss, keeping the task (Wang et al. 2025)", order=2)
def panacea(ctx, cfg: PanaceaConfig) -> dict:
    from ..modeling.gradients import global_norm
    from ..data.mixture import take_qa

    harmful, _idx = take_qa(cfg.harmful_source, cfg.n_harmful, ctx.settings.seed, "first")
    sets = {"harmful": harmful}
    if cfg.task_weight > 0:
        sets["task"] = task_samples(cfg, ctx.run_config, ctx.settings.seed)
    ws = ctx.workspace(sets)
    eps = [torch.zeros_like(p) for p in ws.params]
    history = []
    for _step in range(cfg.steps):
        with ws.displaced(eps, 1.0):
            h, g, grads = objective_gradient(ws, cfg)
        history.append({"harmful_loss": round(h, 6), "task_loss": None if math.isnan(g) else round(g, 6)})
        norm = global_norm(grads)
        if norm == 0.0:  # the harmful loss is past the cap and no task term: nothing to ascend
            break
        eps = [e + cfg.rho * gr / norm for e, gr in zip(eps, grads)]
        length = global_norm(eps)
        if length > cfg.rho:  # back onto the ball of radius rho
            eps = [e * (cfg.rho / length) for e in eps]
    with torch.no_grad():
        for p, e in zip(ws.params, eps):
            p += e
    after = {"harmful_loss": round(ws.mean_loss("harmful"), 6),
             "task_loss": round(ws.mean_loss("task"), 6) if "task" in sets else None}
    return {"n_harmful": len(harmful), "n_task": len(sets.get("task", [])), "perturbation_norm": round(global_norm(eps), 6),
            "harmful_loss_before": history[0]["harmful_loss"], "harmful_loss_after": after["harmful_loss"],
            "task_loss_before": history[0]["task_loss"], "task_loss_after": after["task_loss"], "steps": history}
