"""The selector interface: a registry of selectors by name, what they are given, what they return.

A selector is one function ``(ctx: CurationContext) -> SelectorOutput`` that gives every
candidate alignment sample a score (bigger = more worth keeping); the stage keeps the top k
(ties broken by candidate position). Register one with::

    @register_selector("highest-loss", summary="...", needs_model=True)
    def highest_loss(ctx):
        return SelectorOutput(ctx.candidate_losses)

The context loads what a selector asks for, once: the model with a fresh seeded LoRA adapter and
the tokenized candidate / validation / harmful sets (:attr:`CurationContext.workspace`), the
projected per-sample gradients of the candidates (:attr:`CurationContext.candidate_gradients`),
their losses alone (:attr:`CurationContext.candidate_losses`, forward passes only) and sentence
embeddings (:meth:`CurationContext.embed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..data.mixture import qa_sample
from ..data.samples import Sample
from ..errors import ClinicError
from ..registry import Registry


@dataclass
class CurationData:
    """The curation's data: candidates (rows of the alignment source), the trusted validation
    refusals split off the same source, and the harmful QA pairs; each with its source indices."""

    candidates: list[dict]
    candidate_index: list[int]
    validation: list[dict]
    validation_index: list[int]
    harmful: list[Sample]
    harmful_index: list[int]

    def candidate_samples(self) -> list[Sample]:
        return [qa_sample(r) for r in self.candidates]

    def validation_samples(self) -> list[Sample]:
        return [qa_sample(r) for r in self.validation]


@dataclass
class SelectorOutput:
    """``scores``: one per candidate, bigger = keep; ``columns``: extra per-candidate values for
    the scores file; ``info``: anything for ``metrics.json``."""

    scores: torch.Tensor
    columns: dict[str, list] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SelectorSpec:
    name: str
    fn: Callable[[CurationContext], SelectorOutput]
    summary: str
    needs_model: bool  # loads the model (gradients or losses)
    keeps_all: bool = False  # the "full" baseline: k = every candidate


#: Every selector; each module of :mod:`clinic.curation` registers its own and is found by
#: discovery. Pharmacist lists first (``order=0``: the method the stage exists for).
SELECTORS = Registry("selector", package=__package__)


def register_selector(name: str, summary: str, needs_model: bool = False, keeps_all: bool = False,
                      order: float = float("inf")):
    def wrap(fn):
        SELECTORS.register(name, SelectorSpec(name, fn, summary, needs_model, keeps_all), order=order)
        return fn

    return wrap


def selectors() -> dict[str, SelectorSpec]:
    return dict(SELECTORS.items())


def get_selector(name: str) -> SelectorSpec:
    return SELECTORS.get(name)


class CurationContext:
    """What a selector may use; everything expensive is built on first use and kept."""

    def __init__(self, config, data: CurationData, model_loader: Callable | None = None,
                 embed_fn: Callable[[list[str]], object] | None = None, progress: bool = True):
        """``config``: a :class:`~clinic.stages.curate.CurateConfig`; ``model_loader``: a
        callable returning ``(model, tokenizer)``; ``embed_fn``: texts -> [N, d] embeddings
        (default: the packaged sentence encoder of the classifier judge)."""
        self.config = config
        self.data = data
        self.model_loader = model_loader
        self.embed_fn = embed_fn
        self.progress = progress
        self.timings: dict[str, float] = {}

    @property
    def n(self) -> int:
        return len(self.data.candidates)

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with the curation seed (a fresh one per call)."""
        return torch.Generator().manual_seed(self.config.seed)

    @cached_property
    def workspace(self):
        from ..modeling.workspace import GradientWorkspace

        if self.model_loader is None:
            raise ClinicError("this selector needs a model")
        start = time.perf_counter()
        model, tok = self.model_loader()
        ws = GradientWorkspace(
            model, tok, self.config.train_config(),
            {"candidates": self.data.candidate_samples(), "validation": self.data.validation_samples(),
             "harmful": self.data.harmful},
            last_layers=self.config.grad_layers,
        )
        self.timings["model_load_seconds"] = time.perf_counter() - start
        return ws

    @cached_property
    def projector(self):
        from ..modeling.gradients import Projector

        return Projector(self.workspace.numels, self.config.projection_dim, self.config.projection, self.config.seed)

    @cached_property
    def candidate_gradients(self):
        """:class:`~clinic.curation.gradients.PerSampleStats` of the candidates at theta."""
        stats = self.workspace.per_sample("candidates", self.projector, progress=self.progress)
        self.timings["per_sample_gradient_seconds"] = stats.seconds
        self.timings.update({f"per_sample_{part}_seconds": sec for part, sec in stats.parts.items()})
        return stats

    @cached_property
    def candidate_losses(self) -> torch.Tensor:
        """Per-sample losses of the candidates at theta (forward only, unless the gradients
        were computed anyway)."""
        if "candidate_gradients" in self.__dict__:
            return self.candidate_gradients.losses
        start = time.perf_counter()
        losses = self.workspace.losses("candidates", progress=self.progress)
        self.timings["per_sample_loss_seconds"] = time.perf_counter() - start
        return losses

    def project(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """A full-size gradient (per parameter) projected like the per-sample ones: [dim]."""
        return self.projector([g.unsqueeze(0) for g in grads])[0].double().cpu()

    def embed(self, texts: list[str]) -> torch.Tensor:
        if self.embed_fn is None:
            from ..modeling.encoder import embed

            self.embed_fn = embed
        start = time.perf_counter()
        out = torch.as_tensor(self.embed_fn(texts), dtype=torch.float64)
        self.timings["embedding_seconds"] = time.perf_counter() - start
        return out

    def close(self) -> None:
        if "workspace" in self.__dict__:
            self.workspace.close()
