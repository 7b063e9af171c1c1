"""The gradient workspace: a causal LM with a fresh, seeded LoRA adapter, named tokenized data
sets, and the gradient passes over them (mean losses and gradients, per-sample statistics,
displaced copies). Data curation (Pharmacist and its baselines) and the repair methods use it."""

from __future__ import annotations

import inspect
import tempfile
import time

import torch

from ..errors import ClinicError
from .gradients import LinearGradTaps, PerSampleStats, Projector, last_layer_params, per_sample_loss
from .hooks import displaced


class GradientWorkspace:
    """A causal LM with a fresh, seeded LoRA adapter (theta), named tokenized data sets, and the
    gradient passes over them. Tokenization is the alignment stage's own: a
    :class:`~clinic.modeling.sft.SFTData` (TRL prompt-completion rows, labels on the
    response tokens only, same prompt format and truncation)."""

    def __init__(self, model, tokenizer, train, sets: dict, batch_size: int | None = None, last_layers: int = 0):
        """``train``: a :class:`~clinic.modeling.training.TrainConfig` (LoRA shape, prompt format,
        max length, seed); ``sets``: name -> list of :class:`~clinic.data.samples.Sample`. A fresh LoRA
        adapter (seeded with ``train.seed``) is attached unless ``model`` is a PEFT model.
        ``last_layers`` > 0: every gradient is taken over the adapters of the last that many decoder
        layers only (:func:`last_layer_params`), so each backward pass stops there."""
        import datasets
        from datasets import Dataset
        from peft import PeftModel

        from ..data.formatting import training_row
        from .models import attach_lora
        from .sft import SFTData

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
            self.trainer = SFTData(
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
