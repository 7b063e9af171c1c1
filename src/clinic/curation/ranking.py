"""The ranking a curation run writes: each candidate's rank by score, and the figure of the score
distribution with the kept candidates highlighted (``scores.png``)."""

from __future__ import annotations

from pathlib import Path


def rank_scores(scores) -> list[int]:
    """Rank of each score, 1 = largest; ties go to the earlier candidate."""
    values = [float(s) for s in scores]
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    ranks = [0] * len(values)
    for position, i in enumerate(order):
        ranks[i] = position + 1
    return ranks


def plot_scores(scores: list[float], selected: list[bool], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = [s for s, keep in zip(scores, selected) if keep]
    dropped = [s for s, keep in zip(scores, selected) if not keep]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    bins = min(40, max(5, len(scores) // 5))
    ax1.hist([kept, dropped], bins=bins, range=(min(scores), max(scores) + 1e-12), stacked=True,
             color=["tab:blue", "0.75"], label=[f"selected ({len(kept)})", f"not selected ({len(dropped)})"])
    ax1.set_xlabel("score (bigger = keep)")
    ax1.set_ylabel("samples")
    ax1.legend(fontsize=8)
    ordered = sorted(zip(scores, selected), key=lambda t: -t[0])
    xs = list(range(1, len(ordered) + 1))
    ax2.scatter(xs, [s for s, _ in ordered], s=6, c=["tab:blue" if keep else "0.6" for _, keep in ordered])
    ax2.axvline(len(kept) + 0.5, color="tab:red", lw=0.8, ls="--")
    ax2.set_xlabel("rank")
    ax2.set_ylabel("score")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
