"""Surgery (Liu et al., arXiv 2602.05228): fine-tuning-stage sink-divergence regulariser (§4.3).

Objective, per step::

    CE(user batch) + λ · mean over layers l and query heads h of ReLU( a_{l,h}(x_m) − a_{l,h}(x_r) )

``a_{l,h}(x)`` is the exact per-head sink attention of :mod:`clinic.modeling.attention`: the mean attention
the real tokens after the sink pay to the sink (first token + ``sink_index``). ``x_m`` is a
uniform random draw from the harmful probe pool (first 1000 of ``beavertails-harmful``), ``x_r``
from the harmless pool (first 1000 of ``beavertails-harmless``), ``probes_per_step`` of each
(reference: 1 + 1; with more, ``a`` is averaged over the probes of each kind). Gradients flow
through both probe passes.

Where clinic differs from the reference in *how*, never in *what*:

- attention stays on SDPA kernels for the user batch and the probes; the sink column comes out of
  the same SDPA call (one extra value channel), so no T×T matrix is stored (the reference forces
  eager attention with ``output_attentions=True`` on every pass);
- the harmful and harmless probes run as one right-padded batch; padding never enters a mean, so
  this equals two batch-1 passes. The probe pass skips the LM head (its logits are unused);
- by default the user batch's backward runs before the probe pass (``separate_backward``): the
  gradient is the same sum, and the two graphs are never held at once (lower peak memory).

Probes are formatted like the reference: ``[user: prompt, assistant: response]`` with the chat
template and no system message, whatever system prompt the run trains with.

Several processes (DDP only): every process draws the same probes (one seeded generator), and the
probe pass runs on the unwrapped decoder, so its gradient is the same on every process and needs
no sync; the user batch is sharded and its gradient averaged by DDP. The result is what one
process with the global batch computes. (The separate probe backward is a second backward per
step, which DeepSpeed does not allow.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from datasets import Dataset

from ..data.samples import Sample, pad_batch, probe_ids
from ..errors import ClinicError
from ..modeling.attention import SINK_MODES, sink_attention_values, use_sink_attention
from .config import MethodConfig
from .registry import register_method
from .trainer import ClinicTrainer

PROBE_STREAMS = ("harmful_probes", "harmless_probes")


@dataclass
class SurgeryConfig(MethodConfig):
    """Surgery's hyper-parameters (reference script values as defaults)."""

    streams: ClassVar[dict[str, tuple[str, str]]] = {
        "harmful_probes": ("harmful_probes", "harmful_probe_pool"),
        "harmless_probes": ("harmless_probes", "harmless_probe_pool"),
    }

    lam: float = field(default=300.0, metadata={"help": "regulariser weight lambda (the reference's alpha)"})
    harmful_probes: str = field(default="beavertails-harmful", metadata={"help": "harmful probe data (QA source)"})
    harmful_probe_pool: int = field(default=1000, metadata={"help": "harmful probe pool size (first N rows)"})
    harmless_probes: str = field(default="beavertails-harmless", metadata={"help": "harmless probe data (QA source)"})
    harmless_probe_pool: int = field(default=1000, metadata={"help": "harmless probe pool size (first N rows)"})
    probes_per_step: int = field(default=1, metadata={"help": "probes of each kind drawn per step", "pace": True})
    probe_max_length: int = field(default=512, metadata={"help": "truncate probes to this many tokens", "pace": True})
    sink_index: int = field(default=0, metadata={"help": "sink = first token of the probe + this offset"})
    sink_mode: str = field(default="fixed", metadata={"help": "fixed (sink index) or most_attended (per probe)"})
    probe_seed: int = field(default=43, metadata={"help": "seed of the probe draws (reference: 43)"})
    probe_double_bos: bool = field(
        default=False, metadata={"help": "tokenize probes with special tokens added again (reference quirk)"})
    separate_backward: bool = field(
        default=True, metadata={"help": "backward the user batch before the probe pass (same gradient, less memory)"})

    def __post_init__(self):
        if self.lam < 0:
            raise ClinicError(f"surgery: lam must be non-negative, got {self.lam}")
        if self.probes_per_step < 1:
            raise ClinicError(f"surgery: probes_per_step must be at least 1, got {self.probes_per_step}")
        if self.probe_max_length < 2:
            raise ClinicError(f"surgery: probe_max_length must be at least 2, got {self.probe_max_length}")
        if self.sink_index < 0:
            raise ClinicError(f"surgery: sink_index must be non-negative, got {self.sink_index}")
        if self.sink_mode not in SINK_MODES:
            raise ClinicError(f"surgery: unknown sink_mode {self.sink_mode!r}; choose one of {', '.join(SINK_MODES)}")
        for name in ("harmful_probe_pool", "harmless_probe_pool"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ClinicError(f"surgery: {name} must be at least 1")


@register_method("surgery", stage="finetune", config=SurgeryConfig,
                 summary="sink-divergence regulariser on harmful vs harmless probes (1 + probe pass per step)")
class SurgeryTrainer(ClinicTrainer):
    """CE on the user batch + λ · mean ReLU(sink divergence) over all heads."""

    method_config: SurgeryConfig

    def __init__(self, **kwargs):
        self.probe_pools: dict[str, list[list[int]]] = {}
        super().__init__(**kwargs)
        cfg = self.method_config
        if not isinstance(cfg, SurgeryConfig):
            raise ClinicError("the surgery trainer needs a SurgeryConfig")
        missing = [s for s in PROBE_STREAMS if s not in self.probe_pools]
        if missing:
            raise ClinicError(f"surgery needs the data streams {', '.join(missing)}, which were not supplied")
        self._probe_rng = random.Random(cfg.probe_seed)
        self.last_probe_batch: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self.last_divergence: torch.Tensor | None = None
        use_sink_attention(self.model)  # plain SDPA outside the probe pass

    # -- probes -------------------------------------------------------------------------------

    def prepare_samples(self, samples: list[Sample], name: str) -> Dataset:
        if name not in PROBE_STREAMS:
            return super().prepare_samples(samples, name)
        if not samples:
            raise ClinicError(f"the {name} data stream is empty")
        cfg = self.method_config
        ids = [probe_ids(self.processing_class, s, cfg.probe_max_length, cfg.probe_double_bos) for s in samples]
        too_short = sum(len(x) < cfg.sink_index + 2 for x in ids)
        if too_short:
            raise ClinicError(f"{too_short} {name} probe(s) have no token after the sink (sink index {cfg.sink_index})")
        self.probe_pools[name] = ids
        return Dataset.from_dict({"input_ids": ids})

    def draw_probes(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(input_ids, attention_mask, n)``: n harmful then n harmless probes, right-padded."""
        n = self.method_config.probes_per_step
        seqs = [self._probe_rng.choice(self.probe_pools["harmful_probes"]) for _ in range(n)]
        seqs += [self._probe_rng.choice(self.probe_pools["harmless_probes"]) for _ in range(n)]
        ids, mask = pad_batch(self.processing_class, seqs, device=self.args.device)
        self.last_probe_batch = (ids, mask, n)
        return ids, mask, n

    def regulariser(self, model, probes=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(R, d)``: R = mean ReLU(d) over all layers and query heads, d = [L, H] divergence."""
        cfg = self.method_config
        ids, mask, n = probes if probes is not None else self.draw_probes()
        # The probe pass calls the decoder directly, not the forward accelerate wraps in autocast.
        with self.accelerator.autocast():
            values = sink_attention_values(model, ids, mask, sink_index=cfg.sink_index, mode=cfg.sink_mode)  # [L,2n,H]
        d = values[:, :n].mean(dim=1) - values[:, n:].mean(dim=1)
        self.last_divergence = d.detach()
        return torch.relu(d).mean(), d

    def _log_reg(self, ce: torch.Tensor, reg: torch.Tensor, d: torch.Tensor) -> None:
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["ce_loss"].append(float(ce.detach()))
        metrics["sink_reg"].append(float(reg.detach()))
        metrics["sink_positive_heads"].append(float((d.detach() > 0).sum()))

    # -- loss and step ------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ce = self.lm_loss(model, inputs)
        reg, d = self.regulariser(model)
        loss = ce + self.method_config.lam * reg
        self._log_reg(ce, reg, d)
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.method_config.separate_backward:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            ce = self.lm_loss(model, inputs)
        self.backward(ce)
        del inputs
        with self.compute_loss_context_manager():
            reg, d = self.regulariser(model)
        lam = self.method_config.lam
        # ReLU: no positive head means an exactly zero gradient, so the probe backward is skipped.
        if lam > 0 and bool((d.detach() > 0).any()):
            self.backward(lam * reg)
        self._log_reg(ce, reg, d)
        return (ce.detach() + lam * reg.detach()) / self.current_gradient_accumulation_steps
