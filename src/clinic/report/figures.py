"""The figures of ``clinic report``: HS and FA against p, HS against sink heads, and, with an attack
space, each defence's attacks as HS against FA; each point with its pooled 95 % Wilson interval as
an error bar (rows from :mod:`clinic.report.results`, worst cases from :mod:`clinic.report.adaptive`)."""

from __future__ import annotations

MIN_SPAN = 10.0  # percentage points: the least y-range of a figure


def percent_ylim(lows: list[float], highs: list[float]) -> tuple[float, float]:
    """A y-range in percent covering every error bar, at least ``MIN_SPAN`` points tall.

    A constant series (FA = 0 everywhere) would otherwise get matplotlib's ±4 % of nothing, an
    axis from -0.04 to 0.04 that makes no difference look like a trend; the range stays within
    0-100 plus a margin so that bars at the ends remain visible."""
    low, high = min(lows), max(highs)
    if high - low < MIN_SPAN:
        centre = (low + high) / 2
        low, high = centre - MIN_SPAN / 2, centre + MIN_SPAN / 2
        if low < 0:
            low, high = 0.0, MIN_SPAN
        elif high > 100:
            low, high = 100.0 - MIN_SPAN, 100.0
    margin = 0.05 * (high - low)
    return max(-2.0, low - margin), min(102.0, high + margin)


def _series(rows, column: str) -> dict:
    """``{(align, finetune, task): [(p, score, ci low, ci high)]}`` of the fine-tuned rows."""
    groups: dict = {}
    for row in rows:
        if row["stage"] != "finetuned" or row.get(column) is None or row.get("attack", "") != row.get("fixed attack", ""):
            # an attack space's other points are in the adaptive table, not on the p axis
            continue
        low, high = row[f"{column} ci95"]
        groups.setdefault((row["align"], row["finetune"], row["task"]), []).append((row["p"], row[column], low, high))
    return {key: sorted(points) for key, points in groups.items()}


def _error(values, lows, highs) -> list:
    return [[v - lo for v, lo in zip(values, lows)], [hi - v for v, hi in zip(values, highs)]]


def _defence(row: dict) -> str:
    name = f"{row['align']} → {row['finetune']}"
    return f"{name} + {row['repair']}" if row.get("repair", "none") != "none" else name


def adaptive_figure(rows: list[dict], adaptive: list[dict], out, plt) -> list[str]:
    """``adaptive.png``: per harmful-score column, every attack of every defence as a point (x: its
    fine-tune accuracy, y: its harmful score, both with 95 % intervals). The fixed attack is a
    square; the worst case under the guard is ringed. An attacker wants points high and to the
    right: the ring shows where the guard let it go."""
    attacked = [r for r in rows if r.get("stage") in ("finetuned", "repaired") and "fixed attack" in r]
    columns = list(dict.fromkeys(e["column"] for e in adaptive))
    if not attacked or not columns:
        return []
    fig, axes = plt.subplots(1, len(columns), figsize=(5.5 * len(columns), 4.2), squeeze=False)
    for ax, column in zip(axes[0], columns):
        lows, highs = [], []
        for i, defence in enumerate(dict.fromkeys(_defence(r) for r in attacked)):
            points = [r for r in attacked if _defence(r) == defence and r.get(column) is not None]
            fa_col = f"FA {points[0]['task']}" if points else None
            points = [r for r in points if r.get(fa_col) is not None]
            if not points:
                continue
            x, y = [r[fa_col] for r in points], [r[column] for r in points]
            xlo, xhi = [r[f"{fa_col} ci95"][0] for r in points], [r[f"{fa_col} ci95"][1] for r in points]
            ylo, yhi = [r[f"{column} ci95"][0] for r in points], [r[f"{column} ci95"][1] for r in points]
            colour = f"C{i % 10}"
            ax.errorbar(x, y, xerr=_error(x, xlo, xhi), yerr=_error(y, ylo, yhi), fmt="o", color=colour,
                        markersize=4, capsize=2, alpha=0.8, label=defence)
            for r, xi, yi in zip(points, x, y):
                if r["attack"] == r["fixed attack"]:
                    ax.plot([xi], [yi], "s", color=colour, markersize=8, fillstyle="none")
            worst = next((e["worst"] for e in adaptive if e["column"] == column and
                          _defence(e) == defence and e["worst"]["FA"] is not None), None)
            if worst is not None:
                ax.plot([worst["FA"]], [worst["score"]], "o", color=colour, markersize=13, fillstyle="none")
            lows, highs = lows + ylo, highs + yhi
        if lows:
            ax.set_ylim(*percent_ylim(lows, highs))
        else:  # no attack with a task accuracy (an unscored task): nothing to place on the x axis
            ax.text(0.5, 0.5, "no attack with a task accuracy", ha="center", transform=ax.transAxes)
        ax.set_xlabel("fine-tune accuracy (%), 95 % CI")
        ax.set_ylabel("harmful score (%), 95 % CI")
        ax.set_title(f"{column}\nsquare: fixed attack; ring: worst case under the guard", fontsize=9)
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "adaptive.png", dpi=110)
    plt.close(fig)
    return ["adaptive.png"]


def figures(rows: list[dict], out, adaptive: list[dict] | None = None) -> list[str]:
    """Write the figures into ``out``; returns their file names (``adaptive``: the entries of
    :func:`clinic.report.adaptive.adaptive_rows`, for the attack-space figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    columns = sorted({k for r in rows for k in r if f"{k} ci95" in r})
    hs_cols = [c for c in columns if c.startswith("HS ")]
    fa_cols = [c for c in columns if c.startswith("FA ")]
    for name, cols, ylabel in (("hs_vs_p.png", hs_cols, "harmful score (%)"),
                               ("fa_vs_p.png", fa_cols, "fine-tune accuracy (%)")):
        if not cols:
            continue
        fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 3.8), squeeze=False)
        plotted = False
        for ax, col in zip(axes[0], cols):
            lows, highs = [], []
            series = sorted(_series(rows, col).items())
            every_p = [point[0] for _, points in series for point in points]
            # series side by side around each p, so that equal scores do not hide each other's bars
            span = max(max(every_p, default=0) - min(every_p, default=0), 0.1)
            dodge = 0.02 * span
            for i, ((align, finetune, task), points) in enumerate(series):
                p, v, lo, hi = (list(t) for t in zip(*points))
                p = [x + (i - (len(series) - 1) / 2) * dodge for x in p]
                ax.errorbar(p, v, yerr=_error(v, lo, hi), marker="o", capsize=3,
                            label=f"{align} → {finetune} ({task})")
                lows, highs, plotted = lows + lo, highs + hi, True
            if lows:
                ax.set_ylim(*percent_ylim(lows, highs))
                ax.set_xlim(min(every_p) - 0.1 * span, max(every_p) + 0.1 * span)
                ax.set_xticks(sorted(set(every_p)))  # the grid's p values, not ticks between dodged points
            ax.set_xlabel("poison ratio p")
            ax.set_ylabel(f"{ylabel}, 95 % CI")
            ax.set_title(col)
            ax.grid(alpha=0.3)
        if plotted:
            axes[0][0].legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            made.append(name)
        plt.close(fig)
    sink_rows = [r for r in rows if r.get("positive sink heads") is not None]
    if sink_rows and hs_cols:
        fig, axes = plt.subplots(1, len(hs_cols), figsize=(5 * len(hs_cols), 3.8), squeeze=False)
        for ax, col in zip(axes[0], hs_cols):
            points = [r for r in sink_rows if r.get(col) is not None]
            if not points:
                continue
            x, v = [r["positive sink heads"] for r in points], [r[col] for r in points]
            lo, hi = [r[f"{col} ci95"][0] for r in points], [r[f"{col} ci95"][1] for r in points]
            ax.errorbar(x, v, yerr=_error(v, lo, hi), fmt="o", markersize=4, capsize=3)
            for r, xi, vi in zip(points, x, v):
                where = f" p={r['p']:g}" if r["p"] is not None else ""
                ax.annotate(f"{r['align']} → {r['finetune']}{where}", (xi, vi), fontsize=6)
            ax.set_ylim(*percent_ylim(lo, hi))
            ax.set_xlabel("positive sink-divergence heads")
            ax.set_ylabel("harmful score (%), 95 % CI")
            ax.set_title(col)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "hs_vs_sink_heads.png", dpi=110)
        plt.close(fig)
        made.append("hs_vs_sink_heads.png")
    if adaptive:
        made += adaptive_figure(rows, adaptive, out, plt)
    return made
