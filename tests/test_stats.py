"""Known answers for the intervals and paired comparisons of clinic.evaluation.stats."""

from __future__ import annotations

import math

import pytest

from clinic.errors import ClinicError
from clinic.evaluation.stats import mcnemar_exact, paired_difference, wilson_interval

Z = 1.959963984540054  # the 97.5 % normal quantile
Z2 = Z * Z  # 3.841459


def test_wilson_known_answers():
    # 3/40: centre (3 + Z2/2) / (40 + Z2) = 4.920729 / 43.841459 = 0.112239;
    # half width Z / (40 + Z2) * sqrt(3 * 37 / 40 + Z2 / 4) = 0.044706 * sqrt(3.735365) = 0.086403
    low, high = wilson_interval(3, 40)
    assert low == pytest.approx(2.5836, abs=1e-3) and high == pytest.approx(19.8642, abs=1e-3)
    # 0/40: the lower bound is 0 and the upper Z2 / (40 + Z2) = 3.841459 / 43.841459
    assert wilson_interval(0, 40) == pytest.approx((0.0, 8.7622), abs=1e-3)
    assert wilson_interval(0, 3)[0] == 0.0 and wilson_interval(3, 3)[1] == 100.0  # the score lies inside
    # 40/40: mirror image, lower 40 / (40 + Z2)
    assert wilson_interval(40, 40) == pytest.approx((91.2378, 100.0), abs=1e-3)
    # no items: no information
    assert wilson_interval(0, 0) == (0.0, 100.0)


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ClinicError, match="0 <= k <= n"):
        wilson_interval(5, 4)


def test_mcnemar_exact_is_the_binomial_tail_on_discordant_pairs():
    # b=1, c=7: 8 discordant pairs; two-sided p = 2 * P(X <= 1), X ~ Bin(8, 1/2) = 2 * (1 + 8) / 256
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256)
    # b=0, c=5: 2 * (1/2)^5
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    # b=3, c=3: the tail reaches past the middle; capped at 1
    assert mcnemar_exact(3, 3) == 1.0
    # 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert mcnemar_exact(2, 10) == pytest.approx(158 / 4096)


def _pairs(both: int, only_x: int, only_y: int, neither: int) -> tuple[list[bool], list[bool]]:
    x = [True] * both + [True] * only_x + [False] * only_y + [False] * neither
    y = [True] * both + [False] * only_x + [True] * only_y + [False] * neither
    return x, y


def test_paired_difference_same_flags_is_zero_with_p_one():
    flags = [True, False, False, True, False] * 8
    result = paired_difference(flags, flags)
    assert result.diff == 0.0 and result.p == 1.0 and (result.b, result.c) == (0, 0) and result.n == 40
    low, high = result.ci95
    assert low < 0 < high  # identical flags still leave uncertainty about the two models


def test_paired_difference_known_answer():
    # Fagerland, Lydersen & Laake (2017), ch. 8: complete response before and after consolidation
    # therapy (Cavo et al. 2012), table [[59, 6], [16, 80]]: Newcombe square-and-add estimate
    # -0.0621, 95 % CI -0.1186 to -0.0046.
    result = paired_difference(*_pairs(59, 6, 16, 80))
    assert result.diff == pytest.approx(100 * (6 - 16) / 161)
    assert result.ci95 == pytest.approx((-11.86, -0.46), abs=0.01)
    # the McNemar p of the same table: 2 * P(X <= 6), X ~ Bin(22, 1/2)
    tail = sum(math.comb(22, k) for k in range(7)) / 2**22
    assert result.p == pytest.approx(2 * tail)
    assert (result.b, result.c, result.n) == (6, 16, 161)


def test_paired_difference_uses_the_pairing():
    # the same marginals (20/40 vs 10/40), once with every y-positive also x-positive (strongly
    # correlated) and once with disjoint positives: pairing makes the first interval narrower
    correlated = paired_difference(*_pairs(10, 10, 0, 20))
    disjoint = paired_difference(*_pairs(0, 20, 10, 10))
    assert correlated.diff == disjoint.diff == pytest.approx(25.0)
    width = lambda r: r.ci95[1] - r.ci95[0]  # noqa: E731
    assert width(correlated) < width(disjoint)
    assert correlated.p == pytest.approx(2 / 2**10)  # b=10, c=0


def test_paired_difference_needs_the_same_items():
    with pytest.raises(ClinicError, match="same items"):
        paired_difference([True, False], [True])
    with pytest.raises(ClinicError, match="at least one item"):
        paired_difference([], [])


def test_paired_difference_small_positive_correlation_counts_as_none():
    # Bentur et al. 2009 (Fagerland et al. ch. 8), [[1, 1], [7, 12]]: ad - bc = 5 <= n/2, so
    # Newcombe's phi is 0 and the limits are the plain square-and-add of the two Wilson intervals
    result = paired_difference(*_pairs(1, 1, 7, 12))
    p1, p2 = 2 / 21, 8 / 21
    l1, u1 = (v / 100 for v in wilson_interval(2, 21))
    l2, u2 = (v / 100 for v in wilson_interval(8, 21))
    assert result.ci95 == pytest.approx((100 * (p1 - p2 - math.hypot(p1 - l1, u2 - p2)),
                                         100 * (p1 - p2 + math.hypot(u1 - p1, p2 - l2))))
