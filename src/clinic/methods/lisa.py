"""Lisa (Huang et al. 2024): bi-state fine-tuning with a proximal term (docs/reference/algorithms.md §4.2).

Two states alternate. In the **align** state the user's batch is discarded and a batch of the
provider's alignment ("guide") data is trained on instead; in the **finetune** state the user's
batch is used. The run starts in align (when there is guide data), stays ``align_steps``
optimizer steps (K_align), then ``finetune_steps`` (K_ft), and so on. On each switch the current
weights become the *anchor* of the state being left, and the loss of each state is::

    CE(batch) + [step > prox_start · total_steps] · ρ/2 · ||w − anchor_other||²

where ``anchor_other`` is the last weights of the *other* state (both anchors start as the initial
weights) and ``w`` runs over the trainable parameters only (the LoRA adapter, or every weight
with full fine-tuning). The proximal term is a custom autograd function: its gradient
``ρ (w − anchor)`` is formed in backward, no copy of ``w − anchor`` is kept in the graph.

Reference settings (``LISA_REFERENCES``; pass them as method options):

- LISA repo: K_align=100, K_ft=900, ρ=1, guide data = 10000 BeaverTails ``is_safe=True`` pairs
  (``--guide-data beavertails-harmless``; the offline copy holds 1,525), batch 5, lr 1e-5;
- BOOST repo: same K, ρ=0.01, guide data = refusal-file samples (``--guide-data refusals``).

Steps are counted in optimizer steps (the reference counts ``training_step`` calls: the same with
gradient accumulation 1); a switch happens only at an accumulation boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import ClinicError
from .config import MethodConfig
from .engines import WHOLE_WEIGHT_ENGINES
from .registry import register_method
from .trainer import ClinicTrainer

ALIGN, FINETUNE = "align", "finetune"

LISA_REFERENCES: dict[str, dict] = {
    "lisa": dict(align_steps=100, finetune_steps=900, rho=1.0, guide_data="beavertails-harmless", guide_size=10000),
    "booster": dict(align_steps=100, finetune_steps=900, rho=0.01, guide_data="refusals", guide_size=10000),
}


@dataclass
class LisaConfig(MethodConfig):
    """Lisa's hyper-parameters (LISA-repo values as defaults; BOOST repo: rho 0.01)."""

    streams: ClassVar[dict[str, tuple[str, str]]] = {"guide": ("guide_data", "guide_size")}

    guide_data: str = field(default="refusals", metadata={"help": "alignment (guide) data used in the align state"})
    guide_size: int | None = field(default=None, metadata={"help": "guide samples (first N; default all)"})
    align_steps: int = field(default=100, metadata={"help": "K_align: optimizer steps per align state"})
    finetune_steps: int = field(default=900, metadata={"help": "K_ft: optimizer steps per finetune state"})
    rho: float = field(default=1.0, metadata={"help": "proximal weight rho (LISA repo 1, BOOST repo 0.01)"})
    prox_start: float = field(
        default=0.1, metadata={"help": "proximal term active after this fraction of the total steps"})

    def __post_init__(self):
        if self.align_steps < 0 or self.finetune_steps < 0:
            raise ClinicError("lisa: align_steps and finetune_steps must be non-negative")
        if self.align_steps == 0 and self.finetune_steps == 0:
            raise ClinicError("lisa: align_steps and finetune_steps cannot both be 0")
        if self.rho < 0:
            raise ClinicError(f"lisa: rho must be non-negative, got {self.rho}")
        if not 0 <= self.prox_start <= 1:
            raise ClinicError(f"lisa: prox_start must be a fraction in [0, 1], got {self.prox_start}")
        if self.guide_size is not None and self.guide_size < 1:
            raise ClinicError("lisa: guide_size must be at least 1")


class _Proximal(torch.autograd.Function):
    """``ρ/2 · Σ ||p − a||²`` with gradient ``ρ (p − a)`` computed in backward (nothing cached)."""

    @staticmethod
    def forward(ctx, rho: float, anchors: list[torch.Tensor], *params: torch.Tensor) -> torch.Tensor:
        ctx.rho, ctx.anchors = rho, anchors
        ctx.save_for_backward(*params)
        total = torch.zeros((), dtype=torch.float32, device=params[0].device)
        for p, a in zip(params, anchors):
            total += (p.detach().float() - a.float()).pow(2).sum().to(total.device)
        return total * (rho / 2)

    @staticmethod
    def backward(ctx, grad_output):
        params = ctx.saved_tensors
        grads = [(grad_output * ctx.rho * (p.float() - a.float())).to(p.dtype) for p, a in zip(params, ctx.anchors)]
        return (None, None, *grads)


def proximal_term(params: list[torch.Tensor], anchors: list[torch.Tensor], rho: float) -> torch.Tensor:
    """``ρ/2 · Σ_p ||p − anchor_p||²`` (differentiable in ``params``)."""
    return _Proximal.apply(rho, anchors, *params)


@register_method("lisa", stage="finetune", config=LisaConfig,
                 summary="bi-state: alternate guide (alignment) and user data with a proximal term (1 pass per step)",
                 engines=WHOLE_WEIGHT_ENGINES)
class LisaTrainer(ClinicTrainer):
    """Alternate align / finetune states; proximal pull towards the other state's last weights."""

    method_config: LisaConfig

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        cfg = self.method_config
        if not isinstance(cfg, LisaConfig):
            raise ClinicError("the lisa trainer needs a LisaConfig")
        self.has_guide = "guide" in self.extra_datasets
        self.lisa_state = ALIGN if (self.has_guide and cfg.align_steps > 0) else FINETUNE
        self.clock = 0  # optimizer steps in the current state
        self.steps = 0  # optimizer steps so far
        self._micro = 0
        self.state_log: list[str] = []  # the state of every optimizer step, in order
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.align_anchor = [p.detach().clone() for p in self._params]  # last weights of the align state
        self.finetune_anchor = [p.detach().clone() for p in self._params]  # last weights of the finetune state

    # -- state machine ------------------------------------------------------------------------

    def _snapshot(self, anchors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for a, p in zip(anchors, self._params):
                a.copy_(p.detach())

    def _switch(self, new_state: str) -> None:
        # the weights now are the last weights of the state being left
        self._snapshot(self.align_anchor if self.lisa_state == ALIGN else self.finetune_anchor)
        self.lisa_state = new_state
        self.clock = 0

    def check_mode(self) -> None:
        """The reference's switching rule, evaluated at the start of each optimizer step."""
        cfg = self.method_config
        if self.steps == 0:
            return
        if self.lisa_state == ALIGN:
            if cfg.finetune_steps > 0 and self.clock % max(cfg.align_steps, 1) == 0:
                self._switch(FINETUNE)
        elif self.has_guide and cfg.align_steps > 0 and self.clock % max(cfg.finetune_steps, 1) == 0:
            self._switch(ALIGN)

    def anchor(self) -> list[torch.Tensor]:
        """The anchor of the current state: the other state's last weights."""
        return self.finetune_anchor if self.lisa_state == ALIGN else self.align_anchor

    def total_steps(self) -> int:
        return int(self.state.max_steps or 0)

    def proximal_active(self) -> bool:
        cfg = self.method_config
        return cfg.rho > 0 and self.steps > cfg.prox_start * self.total_steps()

    def proximal(self) -> torch.Tensor:
        return proximal_term(self._params, self.anchor(), self.method_config.rho)

    # -- steps --------------------------------------------------------------------------------

    def select_inputs(self, inputs):
        """The batch this micro-step trains on: a guide batch in the align state, else ``inputs``."""
        if self.lisa_state == ALIGN:
            return self.next_batch("guide")
        return inputs

    def training_step(self, model, inputs, num_items_in_batch=None):
        accum = self.args.gradient_accumulation_steps
        first_micro = self._micro % accum == 0
        if first_micro:
            self.check_mode()
        inputs = self.select_inputs(inputs)
        if self.lisa_state == ALIGN:
            num_items_in_batch = None  # counted for the discarded user batch
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._micro += 1
        if self._micro % accum == 0:
            self.state_log.append(self.lisa_state)
            self.clock += 1
            self.steps += 1
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.lm_loss(model, inputs)
        metrics = self._metrics["train" if model.training else "eval"]
        metrics["lisa_align_state"].append(1.0 if self.lisa_state == ALIGN else 0.0)
        if model.training and self.proximal_active():
            prox = self.proximal()
            metrics["lisa_proximal"].append(float(prox.detach()))
            loss = loss + prox.to(loss.dtype)
        return (loss, None) if return_outputs else loss
