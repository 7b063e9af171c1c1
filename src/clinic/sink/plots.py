"""Figures of a sink analysis (matplotlib, Agg backend, PNG): the ``[L, H]`` heatmap, the
histogram of the divergences, and the count-versus-step / count-versus-score lines."""

from __future__ import annotations

from pathlib import Path

import torch

from .divergence import histogram


def heatmap(divergence: torch.Tensor, path: Path, title: str) -> None:
    """The ``[L, H]`` divergences, diverging colours centred on 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    d = divergence.numpy()
    bound = float(abs(d).max()) or 1e-6
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * d.shape[1] + 2), max(3, 0.25 * d.shape[0] + 1.5)))
    image = ax.imshow(d, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound),
                      interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="sink divergence (harmful − harmless)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def histogram_plot(divergence: torch.Tensor, path: Path, title: str) -> None:
    """The :func:`~.divergence.histogram` of the divergences, positive bins red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = histogram(divergence)
    edges, counts = hist["edges"], hist["counts"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colours = ["tab:red" if (a + b) / 2 > 0 else "tab:blue" for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge", color=colours)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("sink divergence")
    ax.set_ylabel("heads")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def line_plot(xs, ys, path: Path, xlabel: str, title: str) -> None:
    """The positive-head count against ``xs`` (training step or harmful score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("heads with positive sink divergence")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
