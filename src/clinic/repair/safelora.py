"""SafeLoRA (Hsu et al. 2024, arXiv 2405.16833): project the fine-tuning LoRA update of the layers
that drift from the alignment direction onto it.

Objective, per LoRA layer: V = W_aligned - W_base (the alignment direction of that weight),
C = V Vᵀ / ‖V‖_F; the fine-tuning update ΔW = B A (the LoRA scaling does not change any cosine)
is kept when cos(ΔW, C ΔW) is high and replaced by C ΔW when it is low: below the threshold τ
(``select: threshold``) or among the k least similar layers (``select: number``). C ΔW = (C B) A,
so the repaired update is still a LoRA update of the same rank: only B changes.

From IBM/SafeLoRA (model.py): C uses the Frobenius norm; the cosine is taken between the flattened
B A and C B A; a layer is projected when its cosine is ``<=`` the threshold; the ``number`` rule
projects the k lowest; defaults ``number`` with k = 10 and τ = 0.5.
Deviations (docs/methods/safelora.md): layers are matched by module name, not by parameter
order; a layer whose V is zero (the alignment did not touch it) has no alignment direction and is
left as it is (IBM's code would divide by zero); ``number`` projects exactly k layers (ties broken
by layer order), where IBM's code projects every layer whose cosine equals the k-th.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ClinicError
from ..values import check_range, coerce_fields
from .base import lora_layers, register_repair

SELECTIONS = ("threshold", "number")


@dataclass
class SafeLoRAConfig:
    select: str = field(default="number", metadata={
        "help": "which layers are projected: threshold (cosine <= tau) or number (the k least similar)"})
    threshold: float = field(default=0.5, metadata={"help": "tau, the cosine at or below which a layer is projected"})
    num_layers: int = field(default=10, metadata={"help": "k, the number of least similar layers projected (select number)"})
    base_model: str | None = field(default=None, metadata={
        "help": "the model before alignment (default: the fine-tuned chain without its last two adapters)"})
    aligned_model: str | None = field(default=None, metadata={
        "help": "the aligned model (default: the fine-tuned chain without the fine-tuning adapter)"})

    def __post_init__(self):
        coerce_fields(self, "safelora option ")
        if self.select not in SELECTIONS:
            raise ClinicError(f"unknown safelora selection {self.select!r}; choose one of {', '.join(SELECTIONS)}")
        check_range(self.threshold, "safelora threshold", -1.0, 1.0)
        check_range(self.num_layers, "safelora num_layers", 1)


def projection(v: torch.Tensor) -> torch.Tensor:
    """C = V Vᵀ / ‖V‖_F (float64; ``V`` is [out, in], C is [out, out])."""
    v = v.double()
    return v @ v.T / torch.linalg.matrix_norm(v)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two matrices as flat vectors (0 when either is zero)."""
    return torch.nn.functional.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1), eps=1e-30).item()


def select_layers(cosines: list[float], cfg: SafeLoRAConfig) -> list[bool]:
    """Which layers are projected: cosine <= tau, or the k lowest (all when k exceeds them)."""
    if cfg.select == "threshold":
        return [c <= cfg.threshold for c in cosines]
    order = sorted(range(len(cosines)), key=lambda i: (cosines[i], i))
    chosen = set(order[: cfg.num_layers])
    return [i in chosen for i in range(len(cosines))]


@register_repair("safelora", config=SafeLoRAConfig,
                 summary="project low-similarity LoRA updates onto the alignment direction (Hsu et al. 2024)", order=0)
@torch.no_grad()
def safelora(ctx, cfg: SafeLoRAConfig) -> dict:
    layers = lora_layers(ctx.model)
    base, aligned = ctx.linear_weights("base"), ctx.linear_weights("aligned")
    kept, projections, cosines, skipped = [], [], [], []
    for name, layer in layers:
        if name not in base or name not in aligned:
            raise ClinicError(f"the base or aligned model has no layer {name}; name models of the fine-tuned "
                              f"model's architecture")
        if base[name].shape != aligned[name].shape:
            raise ClinicError(f"layer {name} has shape {tuple(base[name].shape)} in the base model and "
                              f"{tuple(aligned[name].shape)} in the aligned model")
        v = aligned[name] - base[name]
        if not torch.any(v):
            skipped.append(name)
            continue
        c = projection(v)
        b, a = layer.lora_B["default"].weight.double(), layer.lora_A["default"].weight.double()
        if c.shape[0] != b.shape[0]:
            raise ClinicError(f"layer {name}: the reference models' weight has {c.shape[0]} outputs, the adapter {b.shape[0]}")
        delta = b @ a
        kept.append((name, layer))
        projections.append(c)
        cosines.append(cosine(delta, c @ delta))
    if not kept:
        raise ClinicError("the base and aligned models are identical in every adapted layer: there is no alignment "
                          "direction to project onto")
    chosen = select_layers(cosines, cfg)
    for (_name, layer), c, project in zip(kept, projections, chosen):
        if project:
            weight = layer.lora_B["default"].weight
            weight.copy_((c @ weight.double()).to(weight.dtype))
    return {
        "layers": len(kept), "projected": sum(chosen), "skipped_zero_alignment": skipped,
        "per_layer": [{"layer": n, "cosine": round(c, 6), "projected": p} for (n, _), c, p in zip(kept, cosines, chosen)],
    }
