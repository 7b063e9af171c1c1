"""Baseline selectors, one small function each (scores: bigger = keep).

- ``random``: seeded uniform scores;
- ``full``: every candidate (the no-curation reference);
- ``highest-loss`` / ``lowest-loss``: the sample's alignment loss at the starting model;
- ``gradient-norm``: the exact L2 norm of the sample's gradient over the LoRA parameters;
- ``less``: LESS-like: cosine between the sample's projected gradient and the projected mean
  gradient of the validation refusals, at one point (the starting model with a fresh LoRA;
  LESS proper sums Adam-preconditioned similarities over warm-up checkpoints);
- ``diversity``: k-center greedy (farthest-first traversal) on the sentence embeddings of
  prompt + response; the traversal order is the ranking, so the top k are the k centres.
"""

from __future__ import annotations

import torch

from .base import CurationContext, SelectorOutput, register_selector


@register_selector("random", summary="seeded random subset")
def random_scores(ctx: CurationContext) -> SelectorOutput:
    return SelectorOutput(torch.rand(ctx.n, generator=ctx.generator(), dtype=torch.float64))


@register_selector("full", summary="all candidates (no curation; ignores the ratio)", keeps_all=True)
def full(ctx: CurationContext) -> SelectorOutput:
    return SelectorOutput(torch.zeros(ctx.n, dtype=torch.float64))


@register_selector("highest-loss", summary="the samples the model fits worst (highest alignment loss)", needs_model=True)
def highest_loss(ctx: CurationContext) -> SelectorOutput:
    losses = ctx.candidate_losses
    return SelectorOutput(losses.clone(), {"loss": losses.tolist()})


@register_selector("lowest-loss", summary="the samples the model fits best (lowest alignment loss)", needs_model=True)
def lowest_loss(ctx: CurationContext) -> SelectorOutput:
    losses = ctx.candidate_losses
    return SelectorOutput(-losses, {"loss": losses.tolist()})


@register_selector("gradient-norm", summary="largest per-sample gradient norm over the LoRA parameters", needs_model=True)
def gradient_norm(ctx: CurationContext) -> SelectorOutput:
    norms = ctx.candidate_gradients.norms
    return SelectorOutput(norms.clone(), {"gradient_norm": norms.tolist()})


@register_selector("less", summary="LESS-like: cosine of each projected gradient to the validation mean gradient",
                   needs_model=True)
def less(ctx: CurationContext) -> SelectorOutput:
    stats = ctx.candidate_gradients
    target = ctx.project(ctx.workspace.mean_gradient("validation")[1])
    cosine = torch.nn.functional.cosine_similarity(stats.projected, target.unsqueeze(0), dim=1, eps=1e-30)
    return SelectorOutput(cosine, {"loss": stats.losses.tolist()})


def k_center_order(embeddings: torch.Tensor, first: int) -> tuple[list[int], list[float | None]]:
    """Farthest-first traversal from ``first``: every point, in the order k-center greedy picks
    them, with each one's distance to the centres chosen before it (``None`` for the first)."""
    x = embeddings.double()
    order, radius = [first], [None]
    dist = torch.cdist(x, x[first : first + 1]).squeeze(1)
    dist[first] = -1.0  # chosen points stay at -1: min(-1, d) = -1
    for _ in range(x.shape[0] - 1):
        nxt = int(torch.argmax(dist))
        order.append(nxt)
        radius.append(float(dist[nxt]))
        dist = torch.minimum(dist, torch.cdist(x, x[nxt : nxt + 1]).squeeze(1))
        dist[nxt] = -1.0
    return order, radius


@register_selector("diversity", summary="k-center greedy on sentence embeddings of prompt + response")
def diversity(ctx: CurationContext) -> SelectorOutput:
    rows = ctx.data.candidates
    emb = ctx.embed([f"{r['prompt']}\n\n{r['response']}" for r in rows])
    first = int(torch.randint(ctx.n, (1,), generator=ctx.generator()))
    order, radius = k_center_order(emb, first)
    scores = torch.empty(ctx.n, dtype=torch.float64)
    picked_radius: list[float | None] = [None] * ctx.n
    for position, (i, r) in enumerate(zip(order, radius)):
        scores[i] = ctx.n - position
        picked_radius[i] = r
    return SelectorOutput(scores, {"pick_distance": picked_radius})
