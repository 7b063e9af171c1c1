"""Gradients for data curation: per-sample losses and gradients over the LoRA parameters, their
random projection, and the few batched gradient passes the bilevel objective needs.

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

import inspect
import math
import re
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClinicError
from ..modeling.hooks import displaced

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


class GradientWorkspace:
    """A causal LM with a fresh, seeded LoRA adapter (theta), named tokenized data sets, and the
    gradient passes over them. Tokenization is the alignment stage's own: a
    :class:`~clinic.methods.trainer.ClinicTrainer` (TRL prompt-completion rows, labels on the
    response tokens only, same prompt format and truncation)."""

    def __init__(self, model, tokenizer, train, sets: dict, batch_size: int | None = None, last_layers: int = 0):
        """``train``: a :class:`~clinic.methods.config.TrainConfig` (LoRA shape, prompt format,
        max length, seed); ``sets``: name -> list of :class:`~clinic.data.samples.Sample`. A fresh LoRA
        adapter (seeded with ``train.seed``) is attached unless ``model`` is a PEFT model.
        ``last_layers`` > 0: every gradient is taken over the adapters of the last that many decoder
        layers only (:func:`last_layer_params`), so each backward pass stops there."""
        import datasets
        from datasets import Dataset
        from peft import PeftModel

        from ..data.formatting import training_row
        from ..methods.trainer import ClinicTrainer
        from ..models import attach_lora

        if not sets or any(not samples for samples in sets.values()):
            raise ClinicError("every data set of the curation needs at least one sample")
        fmt = train.prompt_format()
        if fmt.style == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ClinicError("the model has no chat template; use --prompt-style alpaca")
        if not isinstance(model, PeftModel):
            torch.manual_seed(train.seed)
            model = attach_lora(model, train.lora())
        self.batch_size = batch_size or train.batch_size
        self._tmp = tempfile.TemporaryDirectory(prefix="clinic-curate-")
        names = list(sets)
        first_rows = [training_row(tokenizer, fmt, s.instruction, s.input, s.output) for s in sets[names[0]]]
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            self.trainer = ClinicTrainer(
                model=model, args=train.sft_config(self._tmp.name, disable_tqdm=True),
                train_dataset=Dataset.from_list(first_rows), processing_class=tokenizer, prompt_format=fmt,
                extra_data={name: sets[name] for name in names[1:]},
            )
        finally:
            if bars:
                datasets.enable_progress_bars()
        self.datasets = {names[0]: self.trainer.train_dataset, **self.trainer.extra_datasets}
        for name in names:
            lost = len(sets[name]) - len(self.datasets[name])
            if lost:
                raise ClinicError(f"{lost} of the {len(sets[name])} samples of the {name} set lose their whole "
                                  f"response when truncated to max_length={train.max_length} tokens; raise --max-length")
        self.model = self.trainer.model
        self.model.eval()  # no dropout: the gradients are deterministic
        # each set's rows, longest first (stable: ties keep their order), for :meth:`batches`
        self._longest_first = {}
        for name, dataset in self.datasets.items():
            lengths = [len(ids) for ids in dataset["input_ids"]]
            self._longest_first[name] = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        self.params = last_layer_params(self.model, last_layers)
        self.numels = [p.numel() for p in self.params]
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        self._logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters

    def __len__(self) -> int:
        return sum(self.numels)

    def size(self, name: str) -> int:
        return len(self.datasets[name])

    def batches(self, name: str, batch_size: int | None = None):
        """``(row indices, collated batch on the model's device)`` over a set, longest rows first:
        a batch holds rows of similar length, so little of it is padding (on 1,024 refusals at
        128 tokens, dataset order padded 22 % of the tokens, this order 1 %). A sample's loss and
        gradient do not depend on its batch; callers put results back by the row indices."""
        dataset = self.datasets[name].select_columns(["input_ids", "labels"])
        size = batch_size or self.batch_size
        order = self._longest_first[name]
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            yield rows, self.trainer._prepare_inputs(self.trainer.data_collator([dataset[i] for i in rows]))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """:func:`per_sample_loss`, with the output head over the labelled part where the model
        takes ``logits_to_keep``."""
        return per_sample_loss(self.model, batch, labelled_only=self._logits_to_keep)

    # -- passes -----------------------------------------------------------------------------

    def per_sample(self, name: str, projector: Projector, progress: bool = True) -> PerSampleStats:
        """Per-sample losses, projected gradients and gradient norms over a set (one batched
        backward per batch), and the sum of the gradients (full size)."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        taps = LinearGradTaps(self.model, self.params)
        projected, losses, norms = [], [], []
        order: list[int] = []
        parts: dict[str, float] = {}
        grad_sum = [torch.zeros_like(p) for p in self.params]
        total = self.size(name)
        try:
            with tqdm(total=total, desc=f"per-sample gradients ({name})", unit="sample", disable=not progress) as bar:
                for rows, batch in self.batches(name):
                    order += rows
                    t0 = time.perf_counter()
                    loss = self.loss(batch)
                    grads = torch.autograd.grad(loss.sum(), self.params)
                    for acc, g in zip(grad_sum, grads):
                        acc += g
                    t1 = time.perf_counter()
                    per = taps.per_sample(len(rows))
                    norms.append(torch.stack([g.reshape(len(rows), -1).double().pow(2).sum(1) for g in per]).sum(0).sqrt())
                    t2 = time.perf_counter()
                    projected.append(projector(per).double().cpu())
                    losses.append(loss.detach().double().cpu())
                    t3 = time.perf_counter()
                    for part, seconds in (("forward_backward", t1 - t0), ("outer_products", t2 - t1),
                                          ("projection", t3 - t2)):
                        parts[part] = parts.get(part, 0.0) + seconds
                    bar.update(len(rows))
        finally:
            taps.remove()
        back = torch.argsort(torch.tensor(order))  # batch order -> row order
        return PerSampleStats(torch.cat(projected)[back], torch.cat(losses)[back], torch.cat(norms).cpu()[back],
                              grad_sum, time.perf_counter() - start, parts)

    def mean_gradient(self, name: str, weights: torch.Tensor | None = None) -> tuple[float, list[torch.Tensor]]:
        """The weighted mean per-sample loss of a set (uniform when ``weights`` is ``None``;
        weights should sum to 1) and its gradient, per parameter."""
        n = self.size(name)
        w = torch.full((n,), 1.0 / n, dtype=torch.float64) if weights is None else weights.double().cpu()
        value = 0.0
        grads = [torch.zeros_like(p) for p in self.params]
        for rows, batch in self.batches(name):
            loss = self.loss(batch)
            objective = (loss * w[rows].to(loss.device, loss.dtype)).sum()
            for acc, g in zip(grads, torch.autograd.grad(objective, self.params)):
                acc += g
            value += objective.item()
        return value, grads

    @torch.no_grad()
    def losses(self, name: str, progress: bool = False) -> torch.Tensor:
        """Per-sample losses of a set at the current parameters (forward passes only): [N]."""
        from tqdm.auto import tqdm

        out, order = [], []
        with tqdm(total=self.size(name), desc=f"per-sample losses ({name})", unit="sample", disable=not progress) as bar:
            for rows, batch in self.batches(name):
                out.append(self.loss(batch).double().cpu())
                order += rows
                bar.update(len(rows))
        return torch.cat(out)[torch.argsort(torch.tensor(order))]

    def mean_loss(self, name: str) -> float:
        return self.losses(name).mean().item()

    def displaced(self, direction: list[torch.Tensor], scale: float):
        """Temporarily theta <- theta + scale * direction (restored exactly afterwards)."""
        return displaced(self.params, direction, scale)

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector over the parameters (``Projector`` order) as per-parameter tensors."""
        parts = torch.split(flat.to(self.params[0].device, self.params[0].dtype), self.numels)
        return [part.reshape(p.shape) for part, p in zip(parts, self.params)]

    def close(self) -> None:
        self._tmp.cleanup()


def global_norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(t.double().pow(2).sum().item() for t in tensors))
