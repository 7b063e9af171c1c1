"""Uncertainty of the scores: intervals for one proportion and paired comparisons of two models.

Every score clinic writes is a proportion of n items (HS: flagged prompts, FA: correct rows), in
percent. With 40 prompts one prompt is 2.5 points and the standard error near 7 points, so a bare
percentage says little; these functions give what a reader needs beside it:

- :func:`wilson_interval`: the Wilson score interval of k/n (statsmodels ``proportion_confint``).
- :func:`mcnemar_exact`: the exact McNemar test of two models judged on the same items (statsmodels
  ``mcnemar(exact=True)``: a two-sided binomial test on the discordant pairs).
- :func:`paired_difference`: the difference of the two proportions on the same items, with
  Newcombe's hybrid score interval for paired data (method 10 of Newcombe 1998), and the McNemar p.
- :func:`mean_interval`: the t interval of a mean (statsmodels ``DescrStatsW.tconfint_mean``), for a
  graded score (the mean of a judge's probabilities) or a mean of paired differences.

All results are in percent, the unit of the scores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import ClinicError

CONFIDENCE = 0.95


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes out of ``n``, in percent.

    ``n == 0`` carries no information: the whole range (0, 100)."""
    from statsmodels.stats.proportion import proportion_confint

    k, n = int(k), int(n)
    if not 0 <= k <= n:
        raise ClinicError(f"a proportion needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 100.0
    low, high = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    # exact ends: statsmodels' centre - half width leaves ~1e-15 at k = 0, so a score of 0 fell outside
    return (0.0 if k == 0 else 100.0 * float(low)), (100.0 if k == n else 100.0 * float(high))


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t interval of the mean of ``values``, in their unit. Fewer than two values carry no
    spread: the interval is the mean itself (none: (0, 0)); equal values give a zero-width one."""
    from statsmodels.stats.weightstats import DescrStatsW

    values = [float(v) for v in values]
    if len(values) < 2 or max(values) == min(values):
        mean = sum(values) / len(values) if values else 0.0
        return mean, mean
    low, high = DescrStatsW(values).tconfint_mean(alpha=1 - confidence)
    return float(low), float(high)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts ``b`` and ``c``.

    (Only the discordant pairs enter the exact test; the concordant cells are set to 0.)"""
    from statsmodels.stats.contingency_tables import mcnemar

    return float(mcnemar([[0, int(b)], [int(c), 0]], exact=True).pvalue)


@dataclass(frozen=True)
class PairedDifference:
    """``x - y`` on the same items: ``diff`` and ``ci95`` in percent, the exact McNemar ``p``,
    ``n`` items, ``b`` items where only x is positive and ``c`` where only y is."""

    diff: float
    ci95: tuple[float, float]
    p: float
    n: int
    b: int
    c: int

    def as_dict(self) -> dict:
        return {**asdict(self), "ci95": list(self.ci95)}


def paired_difference(x: list[bool], y: list[bool], confidence: float = CONFIDENCE) -> PairedDifference:
    """Difference of the proportions of ``x`` and ``y`` (item i of both is the same prompt).

    Interval: Newcombe's hybrid score interval for the difference of paired proportions
    (R. G. Newcombe, "Improved confidence intervals for the difference between binomial
    proportions based on paired data", Statistics in Medicine 17:2635-2650, 1998, method 10;
    also Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables", 2017, §8.5,
    "Newcombe square-and-add"). It combines the Wilson intervals (l1, u1) of p1 and (l2, u2) of
    p2 with the correlation estimate phi of the 2×2 table [[a, b], [c, d]]:

        L = (p1 - p2) - sqrt((p1 - l1)² - 2·phi·(p1 - l1)·(u2 - p2) + (u2 - p2)²)
        U = (p1 - p2) + sqrt((u1 - p1)² - 2·phi·(u1 - p1)·(p2 - l2) + (p2 - l2)²)

    with phi = (ad - bc - n/2) / sqrt((a+b)(c+d)(a+c)(b+d)) when ad - bc > n/2, 0 when
    0 <= ad - bc <= n/2, (ad - bc) / sqrt(...) when ad - bc < 0, and 0 when a margin is empty —
    Newcombe's published phi (its n/2 correction only shrinks a positive correlation; the Wilson
    intervals themselves are without continuity correction). Unlike the Wald interval it stays
    within [-100, 100] and does not collapse to a point when b = c = 0.
    """
    x, y = [bool(v) for v in x], [bool(v) for v in y]
    if len(x) != len(y):
        raise ClinicError(f"a paired comparison needs the same items on both sides, got {len(x)} and {len(y)}")
    n = len(x)
    if n == 0:
        raise ClinicError("a paired comparison needs at least one item")
    a = sum(u and v for u, v in zip(x, y))
    b = sum(u and not v for u, v in zip(x, y))
    c = sum(v and not u for u, v in zip(x, y))
    d = n - a - b - c
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = (v / 100 for v in wilson_interval(a + b, n, confidence))
    l2, u2 = (v / 100 for v in wilson_interval(a + c, n, confidence))
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    det = a * d - b * c
    if margins == 0 or 0 <= det <= n / 2:
        phi = 0.0
    else:
        phi = (det - n / 2 if det > 0 else det) / math.sqrt(margins)
    theta = p1 - p2
    low = theta - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = theta + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return PairedDifference(100.0 * theta, (100.0 * max(-1.0, low), 100.0 * min(1.0, high)), mcnemar_exact(b, c),
                            n, b, c)
