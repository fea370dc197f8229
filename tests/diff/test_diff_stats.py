"""Share tests, Benjamini-Hochberg and log odds against scipy, brute-force enumeration and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gradtrace.diff.stats import ShareTable, benjamini_hochberg, log_odds_ratio, share_test
from gradtrace.errors import InputError


def fisher_brute(b_in: int, a_in: int, b_out: int, a_out: int) -> float:
    """Two-sided Fisher p-value: sum of hypergeometric tables no more likely than the observed one."""
    n_in, n_b, n = b_in + a_in, b_in + b_out, b_in + a_in + b_out + a_out

    def prob(x: int) -> float:
        return math.comb(n_b, x) * math.comb(n - n_b, n_in - x) / math.comb(n, n_in)

    observed = prob(b_in)
    lo, hi = max(0, n_in - (n - n_b)), min(n_in, n_b)
    return min(1.0, sum(prob(x) for x in range(lo, hi + 1) if prob(x) <= observed * (1 + 1e-7)))


def binom_brute(k: int, n: int, p: float) -> float:
    def prob(x: int) -> float:
        return math.comb(n, x) * p**x * (1 - p) ** (n - x)

    observed = prob(k)
    return min(1.0, sum(prob(x) for x in range(n + 1) if prob(x) <= observed * (1 + 1e-7)))


TABLES = [(12, 3, 40, 45), (0, 9, 50, 41), (5, 5, 5, 5), (30, 1, 70, 99), (2, 0, 0, 2)]


@pytest.mark.parametrize("cells", TABLES)
def test_fisher_matches_scipy_and_enumeration(cells):
    t = ShareTable(*cells)
    p = share_test(t, "fisher")
    assert p == pytest.approx(stats.fisher_exact([[cells[0], cells[1]], [cells[2], cells[3]]]).pvalue, rel=1e-9)
    assert p == pytest.approx(fisher_brute(*cells), rel=1e-9)


@pytest.mark.parametrize("cells", TABLES[:4])
def test_binomial_matches_enumeration(cells):
    t = ShareTable(*cells)
    p0 = (cells[0] + cells[2]) / sum(cells)
    assert share_test(t, "binomial") == pytest.approx(binom_brute(cells[0], cells[0] + cells[1], p0), rel=1e-7)


def test_fisher_hand_computed():
    # table [[2, 0], [0, 2]]: P(x=2) = C(2,2)C(2,0)/C(4,2) = 1/6 and P(x=0) = 1/6, two-sided p = 1/3
    assert share_test(ShareTable(2, 0, 0, 2)) == pytest.approx(1 / 3, rel=1e-12)
    assert share_test(ShareTable(0, 0, 5, 5)) == 1.0


def test_benjamini_hochberg_hand_and_scipy():
    p = [0.01, 0.04, 0.03, 0.2]
    # sorted 0.01,0.03,0.04,0.2 -> 4p/i: 0.04, 0.06, 0.0533, 0.2 -> running min from the top: 0.04, 0.0533, 0.0533, 0.2
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04, 0.16 / 3, 0.16 / 3, 0.2], rtol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pv = rng.uniform(size=rng.integers(1, 40)) ** 3
        np.testing.assert_allclose(benjamini_hochberg(pv), stats.false_discovery_control(pv, method="bh"), rtol=1e-12)
    assert benjamini_hochberg([]).size == 0
    with pytest.raises(InputError, match=r"p_values must lie in \[0, 1\]"):
        benjamini_hochberg([0.5, 1.5])


def test_log_odds_hand_computed():
    lo = log_odds_ratio(ShareTable(10, 5, 5, 10))
    se = math.sqrt(1 / 10 + 1 / 5 + 1 / 5 + 1 / 10)
    assert lo.estimate == pytest.approx(math.log(4), rel=1e-12)
    assert lo.low == pytest.approx(math.log(4) - 1.959963984540054 * se, rel=1e-9)
    assert lo.high == pytest.approx(math.log(4) + 1.959963984540054 * se, rel=1e-9)
    assert not lo.corrected
    # a zero cell: Haldane-Anscombe, 0.5 added to every cell
    z = log_odds_ratio(ShareTable(8, 0, 2, 10))
    assert z.corrected and z.estimate == pytest.approx(math.log(8.5 * 10.5 / (0.5 * 2.5)), rel=1e-12)
    assert log_odds_ratio(ShareTable(1, 9, 9, 1)).estimate < 0  # skewed to A: negative


def test_bad_input():
    with pytest.raises(InputError, match="ShareTable.a_in must be a non-negative integer; got -1"):
        ShareTable(1, -1, 2, 2)
    with pytest.raises(InputError, match="test must be one of"):
        share_test(ShareTable(1, 1, 1, 1), "chi2")
    with pytest.raises(InputError, match="confidence"):
        log_odds_ratio(ShareTable(1, 1, 1, 1), confidence=1.5)


# -- the exact stratified (CMH) test against brute-force enumeration of label assignments ---------------------------

def cmh_brute(tables: list[tuple[int, int, int, int]]) -> float:
    """Every way of choosing which texts of each stratum come from B (stratum margins fixed), equally likely;
    p = share of assignments whose total b_in is no more likely than the observed total."""
    import itertools

    per_stratum = []
    for b_in, a_in, b_out, a_out in tables:
        n_in, n, n_b = b_in + a_in, b_in + a_in + b_out + a_out, b_in + b_out
        # items 0..n_in-1 are in the cluster; count b_in for every choice of the n_b texts from B
        per_stratum.append([sum(1 for i in chosen if i < n_in) for chosen in itertools.combinations(range(n), n_b)])
    totals = [sum(c) for c in itertools.product(*per_stratum)]
    counts: dict[int, int] = {}
    for t in totals:
        counts[t] = counts.get(t, 0) + 1
    observed = counts[sum(t[0] for t in tables)]
    return sum(c for c in counts.values() if c <= observed * (1 + 1e-9)) / len(totals)


@pytest.mark.parametrize("tables", [
    [(3, 0, 1, 4), (2, 1, 2, 2), (0, 2, 3, 1)],
    [(2, 2, 2, 2), (1, 0, 0, 3)],
    [(4, 0, 0, 4)],
    [(0, 0, 3, 3), (2, 1, 1, 2), (1, 3, 2, 0), (3, 0, 0, 1)],  # an empty-cluster stratum and a degenerate one
])
def test_stratified_test_matches_enumeration(tables):
    from gradtrace.diff.stats import stratified_test

    got = stratified_test([ShareTable(*t) for t in tables])
    assert got == pytest.approx(cmh_brute(tables), rel=1e-9)


def test_stratified_test_with_one_stratum_is_fisher_and_strata_matter():
    from gradtrace.diff.stats import stratified_test

    for cells in TABLES:
        assert stratified_test([ShareTable(*cells)]) == pytest.approx(share_test(ShareTable(*cells), "fisher"), rel=1e-9)
    # the cluster's baseline differs between the strata (rare in one, common in the other); B's excess in
    # both is clearer within strata than pooled
    cells = [(2, 0, 4, 6), (6, 3, 0, 3)]
    pooled = share_test(ShareTable(8, 3, 4, 9))
    p = stratified_test([ShareTable(*c) for c in cells])
    assert p == pytest.approx(cmh_brute(cells), rel=1e-9)
    assert p < 0.05 < pooled
    with pytest.raises(InputError, match="at least one stratum"):
        stratified_test([])
    with pytest.raises(InputError, match="ShareTable strata"):
        stratified_test([(1, 2, 3, 4)])
