"""The statistics behind rollouts: exact P(Beta > Beta) against sampling, and the Wilson interval."""

from __future__ import annotations

import numpy as np
import pytest

from core import live_stats
from core.live_stats import prob_greater, wilson_interval


@pytest.mark.parametrize("params", [(1, 1, 1, 1), (3, 5, 4, 4), (121, 41, 81, 81), (50, 3, 40, 10),
                                    (801, 201, 791, 211), (2, 30, 1, 3)])
def test_prob_greater_matches_a_seeded_monte_carlo(params):
    a1, b1, a2, b2 = params
    rng = np.random.default_rng(1234)
    n = 1_000_000
    sampled = float((rng.beta(a1, b1, n) > rng.beta(a2, b2, n)).mean())
    exact = prob_greater(a1, b1, a2, b2)
    assert abs(exact - sampled) < 4 * np.sqrt(0.25 / n), (exact, sampled)  # 4 sd of the sampling error
    assert prob_greater(a2, b2, a1, b1) == pytest.approx(1 - exact, abs=1e-9)


def test_the_four_equivalent_forms_agree_and_huge_counts_use_the_normal_limit(monkeypatch):
    a1, b1, a2, b2 = 40, 25, 30, 31
    forms = [live_stats._p_greater_sum(a1, b1, a2, b2), 1 - live_stats._p_greater_sum(a2, b2, a1, b1),
             live_stats._p_greater_sum(b2, a2, b1, a1), 1 - live_stats._p_greater_sum(b1, a1, b2, a2)]
    assert max(forms) - min(forms) < 1e-9
    exact = prob_greater(3001, 1001, 2951, 1051)
    monkeypatch.setattr(live_stats, "EXACT_MAX_TERMS", 10)
    assert prob_greater(3001, 1001, 2951, 1051) == pytest.approx(exact, abs=2e-3)


def test_wilson_interval_known_values():
    assert wilson_interval(0, 0) is None
    assert wilson_interval(8, 10) == pytest.approx([0.4902, 0.9433], abs=1e-4)  # the textbook example
    assert wilson_interval(0, 5) == pytest.approx([0.0, 0.4345], abs=1e-4)
    assert wilson_interval(5, 5)[1] == 1.0
