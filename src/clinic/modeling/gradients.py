"""Per-sample losses and gradients over the LoRA parameters, and their random projection (what
data curation and the repair methods measure; :mod:`.workspace` holds the data sets and passes).

**Per-sample gradients from one batched backward.** A LoRA adapter is a pair of bias-free
``nn.Linear`` layers per target module, and the gradient of a linear layer's weight is a sum
over tokens of outer products, ``dW = Σ_t δ_t x_tᵀ`` (``x_t`` its input, ``δ_t`` the gradient
of its output). Keeping ``x`` and ``δ`` per sample (a forward hook and a tensor hook, the
technique DP-SGD libraries use) gives every sample's gradient from the backward of the *sum*
of the per-sample losses: no loop over samples, no functorch transforms. The per-sample loss
is the mean cross-entropy over that sample's response tokens, so a sample's gradient does not
depend on the batch it was put in. Any trainable parameter that is not a linear weight (full
fine-tuning, biases) is refused.

**Projection.** A per-sample gradient has D entries (2.4 M for SmolLM2-135M with LoRA r=8 on
seven projections), too many to keep for thousands of samples; each is compressed to ``dim``
numbers by a seeded random projection P with E[<Pa, Pb>] = <a, b> (Johnson-Lindenstrauss):

- ``sparse`` (default): a sparse sign projection (CountSketch): coordinate j goes to one bucket
  h(j) with a random sign s(j); O(D) per sample whatever ``dim`` is, so it is the one that is
  affordable on a CPU at SmolLM2 size;
- ``rademacher`` / ``gaussian``: dense ±1/√dim or N(0, 1/dim) entries, generated chunk by chunk
  from seeded generators, so the D × dim matrix is never materialised (chunks are cached when the
  whole matrix is below ``cache_elements``); O(D·dim) per sample;
- ``dim = 0``: no projection (the exact gradient; for tests and tiny models).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClinicError

PROJECTIONS = ("sparse", "rademacher", "gaussian")
MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "position_ids")


# --------------------------------------------------------------------------------------------
# losses


def per_sample_loss(model, batch: dict[str, torch.Tensor], labelled_only: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy over each sample's labelled (response) tokens: shape [B].

    ``labelled_only``: the output head runs only from the batch's first labelled position on
    (``logits_to_keep``), not over the prompts in front of it, which no loss term reads. The LM head
    is about a fifth of a SmolLM2 forward pass and half of a backward pass that stops after a few
    layers; the logits it does compute are the same."""
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS and k != "labels"}
    labels = batch["labels"][:, 1:]
    if labelled_only:
        labelled = (labels != -100).any(0).nonzero()
        first = int(labelled[0]) if len(labelled) else labels.shape[1] - 1
        # hidden positions first .. L-1 predict tokens first+1 .. L (the last one predicts nothing)
        logits = model(**inputs, use_cache=False, logits_to_keep=labels.shape[1] + 1 - first).logits[:, :-1]
        labels = labels[:, first:]
    else:
        logits = model(**inputs, use_cache=False).logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    labels = labels.to(logits.device)
    token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    mask = labels != -100
    return (token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)


# --------------------------------------------------------------------------------------------
# per-sample gradients


class LinearGradTaps:
    """Per-sample gradients of ``params`` (each the weight of a bias-free or frozen-bias
    ``nn.Linear``) from one backward of the summed per-sample losses."""

    def __init__(self, model: nn.Module, params: list[torch.Tensor]):
        owners: dict[int, nn.Linear] = {}
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight.requires_grad:
                owners[id(module.weight)] = module
        missing = [p for p in params if id(p) not in owners]
        if missing:
            raise ClinicError(
                f"per-sample gradients cover the weights of linear layers (LoRA adapters) only; "
                f"{len(missing)} trainable parameter(s) are something else (full fine-tuning is not supported)"
            )
        self.modules = [owners[id(p)] for p in params]
        for module in self.modules:
            if module.bias is not None and module.bias.requires_grad:
                raise ClinicError("per-sample gradients do not cover trainable biases")
        self._inputs: dict[nn.Module, torch.Tensor] = {}
        self._grads: dict[nn.Module, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._forward_hook) for m in self.modules]

    def _forward_hook(self, module, inputs, output) -> None:
        if not torch.is_grad_enabled():
            return
        if module in self._inputs:
            raise RuntimeError("a tapped linear layer ran twice in one pass (shared weights are not supported)")
        self._inputs[module] = inputs[0].detach()

        def keep(grad, module=module):
            self._grads[module] = grad.detach()

        output.register_hook(keep)

    def per_sample(self, batch_size: int) -> list[torch.Tensor]:
        """Per-parameter gradients [B, out, in] of the last backward; then forgets it."""
        out = []
        for module in self.modules:
            x = self._inputs[module].reshape(batch_size, -1, module.in_features)
            g = self._grads[module].reshape(batch_size, -1, module.out_features)
            out.append(torch.einsum("bto,bti->boi", g, x.to(g.dtype)))
        self.clear()
        return out

    def clear(self) -> None:
        self._inputs.clear()
        self._grads.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self.clear()


# --------------------------------------------------------------------------------------------
# projection


class Projector:
    """A seeded random map from the concatenated parameters (given as a list of per-parameter
    tensors [B, ...]) to [B, dim]; ``dim = 0`` concatenates (no projection)."""

    ROWS_PER_BLOCK = 1024  # dense map: blocks of 1024 input coordinates, each from its own generator

    def __init__(self, numels: list[int], dim: int, kind: str = "sparse", seed: int = 0, cache_elements: int = 2**26):
        if kind not in PROJECTIONS:
            raise ClinicError(f"unknown projection {kind!r}; choose one of {', '.join(PROJECTIONS)}")
        if dim < 0:
            raise ClinicError(f"projection dimension must be >= 0 (0: none), got {dim}")
        self.numels, self.dim, self.kind, self.seed = list(numels), dim, kind, seed
        self.total = sum(self.numels)
        self.out_dim = dim or self.total
        self._sparse: dict[torch.device, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._cache: dict[tuple, torch.Tensor] | None = {} if dim and self.total * dim <= cache_elements else None

    def _generator(self, *key: int) -> torch.Generator:
        value = self.seed
        for part in key:
            value = (value * 1_000_003 + part + 1) % (2**63 - 1)
        return torch.Generator().manual_seed(value)

    def _sparse_maps(self, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(bucket, sign) per parameter, generated on the CPU (device-independent), kept on ``device``."""
        if device not in self._sparse:
            maps = []
            for p, numel in enumerate(self.numels):
                gen = self._generator(p)
                bucket = torch.randint(0, self.dim, (numel,), generator=gen)
                sign = torch.randint(0, 2, (numel,), generator=gen, dtype=torch.int8) * 2 - 1
                maps.append((bucket.to(device), sign.to(device)))
            self._sparse[device] = maps
        return self._sparse[device]

    def _dense_block(self, p: int, chunk: int, rows: int, device, dtype) -> torch.Tensor:
        key = (p, chunk, device, dtype)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        gen = self._generator(p, chunk)
        if self.kind == "gaussian":
            block = torch.randn(rows, self.dim, generator=gen, dtype=torch.float64)
        else:
            block = torch.randint(0, 2, (rows, self.dim), generator=gen).double() * 2 - 1
        block = (block / math.sqrt(self.dim)).to(device, dtype)
        if self._cache is not None:
            self._cache[key] = block
        return block

    @torch.no_grad()
    def __call__(self, per_param: list[torch.Tensor]) -> torch.Tensor:
        flat = [t.reshape(t.shape[0], -1) for t in per_param]
        if [f.shape[1] for f in flat] != self.numels:
            raise ValueError("the tensors do not match the parameter shapes of the projector")
        if not self.dim:
            return torch.cat(flat, dim=1)
        batch, device, dtype = flat[0].shape[0], flat[0].device, flat[0].dtype
        out = torch.zeros(batch, self.dim, device=device, dtype=dtype)
        if self.kind == "sparse":
            for f, (bucket, sign) in zip(flat, self._sparse_maps(device)):
                out.index_add_(1, bucket, f * sign.to(dtype))
            return out
        for p, f in enumerate(flat):
            for chunk, start in enumerate(range(0, f.shape[1], self.ROWS_PER_BLOCK)):
                part = f[:, start : start + self.ROWS_PER_BLOCK]
                out += part @ self._dense_block(p, chunk, part.shape[1], device, dtype)
        return out


# --------------------------------------------------------------------------------------------
# the workspace: a model with a fresh LoRA and tokenized data sets

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def last_layer_params(model: nn.Module, last: int = 0) -> list[torch.Tensor]:
    """The trainable parameters whose gradients the curation takes: all of them (``last = 0``),
    or those of the last ``last`` decoder layers (the ``.layers.<i>.`` in their names, as in every
    Hugging Face decoder). Autograd computes only what the requested gradients need, so the
    backward pass stops at the lowest of these layers: with the last quarter of the layers it
    costs about a quarter of a full one (the forward pass is unchanged)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if last == 0:
        return [p for _, p in named]
    layers = {name: int(m.group(1)) for name, _ in named if (m := _LAYER.search(name))}
    if not layers:
        raise ClinicError("--grad-layers needs decoder layers named '.layers.<i>.' in the model's parameters")
    depth = max(layers.values()) + 1
    if last > depth:
        raise ClinicError(f"--grad-layers {last} is more than the model's {depth} decoder layers")
    return [p for name, p in named if name in layers and layers[name] >= depth - last]


@dataclass
class PerSampleStats:
    """What one per-sample gradient pass over a data set yields."""

    projected: torch.Tensor  # [N, dim] projected per-sample gradients (float64)
    losses: torch.Tensor  # [N] per-sample loss at theta
    norms: torch.Tensor  # [N] exact L2 norm of each per-sample gradient
    grad_sum: list[torch.Tensor]  # sum of the per-sample gradients, per parameter (full size)
    seconds: float = 0.0
    # where the seconds went: forward_backward, outer_products (per-sample gradients and their
    # norms from the taps), projection; the rest is batching and tokenisation
    parts: dict[str, float] = field(default_factory=dict)


def global_norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(t.double().pow(2).sum().item() for t in tensors))
