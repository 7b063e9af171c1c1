"""Antidote (Huang et al. 2024, arXiv 2408.09600): one-shot pruning of the weights that matter most
for harmful answers, after fine-tuning.

Objective: score every weight of the fine-tuning adapter by its importance on harmful data, the
Wanda score S_ij = |W_ij| · ‖X_j‖₂ (X_j: the j-th input feature of that linear layer over every
token of the harmful samples), and zero the top ``fraction`` of the weights of each layer (the
"harmful mask"); the rest stays as fine-tuned.

From git-disl/Antidote: the method is a mask computed once, after fine-tuning, from Wanda scores
over a "re-alignment" set of harmful samples (README.md, ``AntidoteTrainer.save_mask`` in
trainer.py; BeaverTails harmful answers, ``bad_sample_num`` = 2000 in
script/finetune/antidote_poison_ratio.sh), that keeps the top-k important weights (``dense_ratio``
0.1 there) and is applied as ``W *= 1 - mask``. Where the repository is silent (its pruning
function is not in it): which weights are scored, and the comparison group. Here: the linear
layers of the fine-tuning LoRA adapter (``lora_A`` and ``lora_B``; the base weights hold the
alignment and pre-training), ranked within each layer (Wanda's per-layer, unstructured sparsity),
with k = round(fraction · weights of the layer) and ties to the lower index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..values import check_range, coerce_fields
from .base import lora_layers, register_repair


@dataclass
class AntidoteConfig:
    fraction: float = field(default=0.1, metadata={
        "help": "share of each adapter layer's weights zeroed: the most important on harmful data"})
    harmful_source: str = field(default="beavertails-harmful", metadata={"hash_name": "harmful_data", "aliases": ("harmful_data",), 
        "help": "harmful (prompt, harmful answer) pairs that score the weights"})
    n_harmful: int = field(default=64, metadata={"help": "harmful pairs used (the first N)"})

    def __post_init__(self):
        coerce_fields(self, "antidote option ")
        check_range(self.fraction, "antidote fraction", 0.0, 1.0, low_open=True)
        check_range(self.n_harmful, "antidote n_harmful", 1)


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """S = |W| · ‖X_j‖₂, with ``input_sq_sum`` the sum of squares of each input feature: [out, in]."""
    return weight.abs() * input_sq_sum.sqrt().unsqueeze(0)


def top_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """True at the round(fraction · numel) largest scores (ties to the lower flat index)."""
    k = round(fraction * scores.numel())
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        flat = scores.reshape(-1)
        # a stable descending sort: equal scores keep index order
        order = torch.sort(flat, descending=True, stable=True).indices[:k]
        mask[order] = True
    return mask.reshape(scores.shape)


class InputNorms:
    """Sum of squares of each input feature of the given linear layers over the real (not padding)
    tokens of the batches run while it is open."""

    def __init__(self, linears: dict[str, torch.nn.Linear]):
        self.sums = {name: torch.zeros(m.in_features, dtype=torch.float64, device=m.weight.device)
                     for name, m in linears.items()}
        self.token_mask: torch.Tensor | None = None
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in linears.items()]

    def _hook(self, name):
        def hook(_module, args):
            x = args[0].detach().double()
            if self.token_mask is not None:
                x = x * self.token_mask.to(x.device, x.dtype).unsqueeze(-1)
            self.sums[name] += x.pow(2).reshape(-1, x.shape[-1]).sum(0)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@register_repair("antidote", config=AntidoteConfig,
                 summary="zero the adapter weights most important on harmful data (Wanda scores; Huang et al. 2024)", order=1)
@torch.no_grad()
def antidote(ctx, cfg: AntidoteConfig) -> dict:
    from ..data.mixture import take_qa

    harmful, _idx = take_qa(cfg.harmful_source, cfg.n_harmful, ctx.settings.seed, "first")
    ws = ctx.workspace({"harmful": harmful})
    linears = {}
    for name, layer in lora_layers(ws.model):
        linears[f"{name}.lora_A"] = layer.lora_A["default"]
        linears[f"{name}.lora_B"] = layer.lora_B["default"]
    loss_before = ws.mean_loss("harmful")
    norms = InputNorms(linears)
    try:
        for _rows, batch in ws.batches("harmful"):
            norms.token_mask = batch.get("attention_mask")
            ws.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
    finally:
        norms.remove()
    zeroed, total = 0, 0
    for name, module in linears.items():
        mask = top_mask(wanda_scores(module.weight.double(), norms.sums[name]), cfg.fraction)
        module.weight.masked_fill_(mask, 0.0)
        zeroed += int(mask.sum())
        total += mask.numel()
    return {"n_harmful": len(harmful), "weights_scored": total, "weights_zeroed": zeroed,
            "harmful_loss_before": round(loss_before, 6), "harmful_loss_after": round(ws.mean_loss("harmful"), 6)}
