"""T-Vaccine (Liu et al., arXiv 2410.09760): Vaccine restricted to a sampled set of
safety-critical layers, with the other layers frozen and activation-checkpointed
(docs/reference/algorithms.md §3.3).

Every step, on the alignment batch B:

- if ``global_step % K == 0`` (layer scoring, one extra pass on one harmful sample x_h drawn
  from a pool of N_h harmful (prompt, harmful answer) pairs): n_l = ||dh(x_h)/dh_l||_2, the
  norm of the harmful loss's gradient w.r.t. layer l's attention output; p_l = n_l / sum_j n_j;
- if ``global_step % J == 0``: A <- S distinct layers sampled without replacement with
  probability proportional to p (a seeded generator; the reference's ``np.random.choice(...,
  replace=False, p=p)``, i.e. successive draws);
- layers outside A are frozen (``freeze="layers"``: every trainable parameter of the layer, as
  the paper says; ``freeze="attention"``: only the attention module's, as the reference code
  does, so the MLP adapters train in every layer) and run under activation checkpointing, so
  their activations are not stored; gradients still flow *through* them to earlier layers;
- a Vaccine step (two passes) perturbing only the layers in A, with the norm taken over A.

Cost: 2 passes per step, 1 single-sample pass every K steps, plus the recomputation of the
checkpointed layers in backward.

Several processes (DDP only): every process scores the layers on the same harmful sample
(``next_batch(..., shard=False)``) and samples with the same seeded generator, so all processes
freeze and perturb the same layers; the trainer turns DDP's ``find_unused_parameters`` on, which
the frozen layers need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ClinicError
from ..modeling.hooks import LayerCheckpointer, attention_modules, capture_outputs, decoder_layers, inputs_require_grad
from ..modeling.parallel import unwrap
from .config import HarmfulStreamConfig
from .registry import register_method
from .trainer import ClinicTrainer
from .shared import vaccine_passes

FREEZE_MODES = ("layers", "attention")
UNCHECKPOINTED = ("active", "reference")


@dataclass
class TVaccineConfig(HarmfulStreamConfig):
    rho: float = field(default=3.0, metadata={"help": "perturbation intensity rho (norm over the active layers)"})
    active_layers: int = field(default=8, metadata={
        "help": "S: layers perturbed and trained at a time (clamped to the layer count)", "pace": True})
    resample_every: int = field(default=20, metadata={"help": "J: re-sample the active layers every J steps"})
    score_every: int = field(default=200, metadata={"help": "K: recompute the layer probabilities every K steps"})
    freeze: str = field(
        default="layers",
        metadata={"help": "what inactive layers freeze: 'layers' (all their adapters, the paper) or "
                          "'attention' (only attention adapters, MLP adapters train everywhere: the reference code)",
                  "pace": True},
    )
    uncheckpointed: str = field(
        default="active",
        metadata={"help": "layers kept out of activation checkpointing: 'active' (the active set A) or 'reference' "
                          "(A, plus the layer before each active one when the model has more than 26 layers)"},
    )
    checkpoint_inactive: bool = field(
        default=True, metadata={"help": "activation-checkpoint the inactive layers (the memory saving; off only to measure it)",
                                "pace": True}
    )
    harmful_data: str = field(default="beavertails-harmful", metadata={"help": "harmful (prompt, answer) pairs for layer scoring"})
    harmful_size: int = field(default=200, metadata={"help": "N_h: size of the harmful probe pool"})


    def __post_init__(self):
        if self.freeze not in FREEZE_MODES:
            raise ClinicError(f"unknown freeze mode {self.freeze!r}; choose one of {', '.join(FREEZE_MODES)}")
        if self.uncheckpointed not in UNCHECKPOINTED:
            raise ClinicError(f"unknown uncheckpointed rule {self.uncheckpointed!r}; choose one of {', '.join(UNCHECKPOINTED)}")
        if self.active_layers < 1 or self.resample_every < 1 or self.score_every < 1:
            raise ClinicError("active_layers, resample_every and score_every must be at least 1")
        if self.rho < 0:
            raise ClinicError(f"rho must be non-negative, got {self.rho}")
        if self.harmful_size is not None and self.harmful_size < 1:
            raise ClinicError("harmful_size must be at least 1")


def sample_layers(probabilities: list[float], k: int, generator: torch.Generator) -> list[int]:
    """``k`` distinct layer indices drawn without replacement with probability proportional to
    ``probabilities`` (successive draws, renormalising), sorted."""
    weights = torch.tensor(probabilities, dtype=torch.float64)
    if not torch.isfinite(weights).all() or weights.sum() <= 0:
        weights = torch.ones_like(weights)
    # a floor so that layers with a zero score can still fill the set when too few are positive
    weights = weights + 1e-12 * weights.max()
    k = min(k, len(weights))
    return sorted(torch.multinomial(weights, k, replacement=False, generator=generator).tolist())


def inclusion_probabilities(probabilities: list[float], k: int) -> list[float]:
    """Exact P(layer i is in the sampled set) under successive sampling without replacement
    (for checking :func:`sample_layers`; exponential in ``k``, small cases only)."""
    n = len(probabilities)
    total = [0.0] * n

    def walk(chosen: tuple[int, ...], prob: float) -> None:
        if len(chosen) == k:
            for i in chosen:
                total[i] += prob
            return
        rest = sum(probabilities[j] for j in range(n) if j not in chosen)
        for j in range(n):
            if j not in chosen and probabilities[j] > 0:
                walk(chosen + (j,), prob * probabilities[j] / rest)

    walk((), 1.0)
    return total


@register_method("tvaccine", stage="align", config=TVaccineConfig,
                 summary="Vaccine on S layers sampled by harmful gradient norm; the rest frozen and checkpointed")
class TVaccineTrainer(ClinicTrainer):
    """T-Vaccine: layer scoring every K steps, layer sampling every J steps, Vaccine on the
    sampled layers, the others frozen and activation-checkpointed."""

    #: keep the last step's perturbations on ``self.last_perturbation`` (tests; costs memory)
    record_perturbation: bool = False

    def __init__(self, **kwargs):
        # frozen layers produce no gradient: DDP must look for unused parameters (Trainer turns that
        # off for a full model with activation checkpointing)
        kwargs["args"].ddp_find_unused_parameters = True
        super().__init__(**kwargs)
        cfg: TVaccineConfig = self.method_config
        if not isinstance(cfg, TVaccineConfig):
            raise ClinicError("T-Vaccine needs a TVaccineConfig")
        if "harmful" not in self.extra_datasets:
            raise ClinicError("T-Vaccine needs the 'harmful' data stream (harmful prompt + answer pairs) for layer scoring")
        layers = decoder_layers(self.model)
        self.num_layers = len(layers)
        self.n_active = min(cfg.active_layers, self.num_layers)
        self._attention = attention_modules(self.model)
        trainable = {id(p) for p in self.model.parameters() if p.requires_grad}
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._layer_params = [[p for p in layer.parameters() if id(p) in trainable] for layer in layers]
        self._attention_params = [[p for p in attn.parameters() if id(p) in trainable] for attn in self._attention]
        self._generator = torch.Generator().manual_seed(self.args.seed + 7919)
        self._checkpointer: LayerCheckpointer | None = None
        self.grad_norms: list[float] | None = None
        self.probabilities: list[float] | None = None
        self.active: list[int] | None = None
        self._scored_at: int | None = None
        self._sampled_at: int | None = None
        self.layer_history: list[tuple[int, list[int]]] = []
        self.probability_history: list[tuple[int, list[float]]] = []

    # -- layer scoring and sampling -------------------------------------------------------------

    def score_layers(self, model, batch=None) -> list[float]:
        """n_l = ||d loss(harmful sample) / d attention output of layer l||; sets the probabilities."""
        batch = batch if batch is not None else self.next_batch("harmful", 1, shard=False)
        model = unwrap(model)  # an intermediate pass: no DDP gradient sync
        outputs: dict[int, torch.Tensor] = {}
        modules = dict(enumerate(self._attention))
        previous = self._checkpointer.checkpointed if self._checkpointer else None
        if self._checkpointer is not None:  # one sample, but keep the footprint low anyway
            self._checkpointer.set(range(self.num_layers))
        try:
            # gradients w.r.t. activations only (autograd.grad leaves .grad alone), through
            # every layer, frozen or not
            with inputs_require_grad(model), capture_outputs(modules, outputs):
                with self.compute_loss_context_manager():
                    loss = self.lm_loss(model, batch)
                grads = torch.autograd.grad(loss, [outputs[i] for i in range(self.num_layers)], allow_unused=True)
        finally:
            if self._checkpointer is not None:
                self._checkpointer.set(previous)
        norms = [0.0 if g is None else g.detach().float().norm().item() for g in grads]
        total = sum(norms)
        self.grad_norms = norms
        self.probabilities = [n / total for n in norms] if total > 0 else [1.0 / len(norms)] * len(norms)
        self.probability_history.append((self.state.global_step, list(self.probabilities)))
        return self.probabilities

    def resample(self) -> list[int]:
        self.active = sample_layers(self.probabilities, self.n_active, self._generator)
        self.layer_history.append((self.state.global_step, list(self.active)))
        return self.active

    def uncheckpointed_layers(self) -> set[int]:
        """C: the layers that keep their activations."""
        keep = set(self.active or [])
        if self.method_config.uncheckpointed == "reference" and self.num_layers > 26:
            keep |= {i - 1 for i in keep if i != 0}
        return keep

    def apply_freeze(self) -> None:
        """Trainable: the active layers (all originally trainable parameters, or only the
        attention ones with ``freeze="attention"``); everything outside the decoder layers stays."""
        for p in self._trainable:
            p.requires_grad_(True)
        groups = self._layer_params if self.method_config.freeze == "layers" else self._attention_params
        active = set(self.active)
        for i, params in enumerate(groups):
            if i not in active:
                for p in params:
                    p.requires_grad_(False)

    def _install_checkpointing(self, model) -> None:
        if self._checkpointer is not None or not self.method_config.checkpoint_inactive:
            return
        if getattr(self.args, "activation_checkpointing", False) or getattr(self.args, "gradient_checkpointing", False):
            return  # every layer is already checkpointed by transformers
        self._checkpointer = LayerCheckpointer(model)

    def restore_model(self) -> None:
        """Undo the freezing and the checkpoint wrappers (after training)."""
        for p in self._trainable:
            p.requires_grad_(True)
        if self._checkpointer is not None:
            self._checkpointer.remove()
            self._checkpointer = None

    # -- the step -------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        cfg: TVaccineConfig = self.method_config
        model.train()
        inputs = self._prepare_inputs(inputs)
        self._install_checkpointing(model)
        step = self.state.global_step
        # once per optimizer step (micro-batches of an accumulation step share global_step)
        if self.probabilities is None or (step % cfg.score_every == 0 and self._scored_at != step):
            self.score_layers(model)
            self._scored_at = step
        if self.active is None or (step % cfg.resample_every == 0 and self._sampled_at != step):
            self.resample()
            self._sampled_at = step
        self.apply_freeze()
        if self._checkpointer is not None:
            self._checkpointer.set(set(range(self.num_layers)) - self.uncheckpointed_layers())
        modules = {i: self._attention[i] for i in self.active}
        with self.maybe_activation_offload_context:
            loss, perturbation = vaccine_passes(self, model, inputs, modules, cfg.rho)
        if self.record_perturbation:
            self.last_perturbation = {i: e.detach().clone() for i, e in perturbation.items()}
        return loss.detach() / self.current_gradient_accumulation_steps

    def train(self, *args, **kwargs):
        self.restore_model()  # the optimizer must see every trainable parameter
        try:
            return super().train(*args, **kwargs)
        finally:
            self.restore_model()

    def log(self, logs, start_time=None):
        if self.active is not None and "loss" in logs:
            logs["active_layers"] = ",".join(map(str, self.active))
        super().log(logs, start_time)
