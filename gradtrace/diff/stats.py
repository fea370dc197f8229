"""Statistics of a behavioural diff: is a cluster's share of texts from model B
different from B's share overall?

Per cluster we hold a 2 x 2 table of validation texts::

                 from B    from A
    in cluster    b_in      a_in
    elsewhere     b_out     a_out

and test it with Fisher's exact test (default; conditions on both margins) or an
exact binomial test of ``b_in`` out of ``b_in + a_in`` against B's overall share.
With one such table per stratum (per prompt, or per prompt form),
:func:`stratified_test` is the exact conditional Cochran-Mantel-Haenszel test
(``cmh``): it conditions on every stratum's margins, so a cluster whose
baseline varies from prompt to prompt is compared within prompts.
P-values of all clusters (both levels) are corrected together with
Benjamini-Hochberg. The effect size is the log odds ratio
``log((b_in / a_in) / (b_out / a_out))`` (positive: skewed to B) with a Woolf
(logit) confidence interval; a zero cell adds 0.5 to every cell
(Haldane-Anscombe) so the estimate stays finite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ..errors import InputError

TESTS = ("fisher", "binomial")
#: tests of a cluster over per-stratum tables (:func:`stratified_test`)
STRATIFIED_TESTS = ("cmh",)


@dataclasses.dataclass(frozen=True)
class ShareTable:
    """Counts of validation texts, by model, inside and outside one cluster."""

    b_in: int
    a_in: int
    b_out: int
    a_out: int

    def __post_init__(self) -> None:
        for name in ("b_in", "a_in", "b_out", "a_out"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise InputError(f"ShareTable.{name} must be a non-negative integer; got {value!r}")

    @property
    def n_in(self) -> int:
        return int(self.b_in + self.a_in)

    @property
    def share_b(self) -> float:
        """Share of the cluster's validation texts that come from B (nan if empty)."""
        return self.b_in / self.n_in if self.n_in else float("nan")

    @property
    def overall_share_b(self) -> float:
        n = self.b_in + self.a_in + self.b_out + self.a_out
        return (self.b_in + self.b_out) / n if n else float("nan")


def share_test(table: ShareTable, test: str = "fisher") -> float:
    """Two-sided exact p-value that the cluster's B share equals the overall one.

    ``fisher``: Fisher's exact test of the 2 x 2 table. ``binomial``: exact
    binomial test of ``b_in`` successes in ``n_in`` trials with success
    probability B's share among all validation texts.
    """
    from scipy import stats

    if test not in TESTS:
        raise InputError(f"test must be one of {TESTS}; got {test!r}")
    if table.n_in == 0:
        return 1.0
    if test == "fisher":
        return float(stats.fisher_exact([[table.b_in, table.a_in], [table.b_out, table.a_out]]).pvalue)
    p0 = table.overall_share_b
    if p0 in (0.0, 1.0):
        return 1.0
    return float(stats.binomtest(int(table.b_in), table.n_in, p0).pvalue)


def stratified_test(tables: Sequence[ShareTable]) -> float:
    """Two-sided exact conditional test of conditional independence over strata (exact CMH).

    Given every stratum's margins, ``b_in`` of stratum ``s`` is hypergeometric
    (``N_s`` texts, ``B_s`` from B, ``n_s`` in the cluster); the statistic is
    ``T = sum_s b_in_s``, whose null distribution is the convolution of those
    hypergeometric laws. The p-value sums the probabilities of all values of
    ``T`` no more likely than the observed one (the rule of Fisher's test, to
    which it reduces with one stratum). Strata whose margins leave ``b_in`` no
    freedom add a constant and change nothing.
    """
    from scipy import stats

    if not tables:
        raise InputError("stratified_test needs at least one stratum table")
    dist = np.ones(1)
    observed = 0
    for t in tables:
        if not isinstance(t, ShareTable):
            raise InputError(f"stratified_test takes ShareTable strata; got {type(t).__name__}")
        n, n_b, n_in = t.b_in + t.a_in + t.b_out + t.a_out, t.b_in + t.b_out, t.n_in
        lo, hi = max(0, n_in - (n - n_b)), min(n_in, n_b)
        pmf = np.zeros(hi + 1)
        pmf[lo:] = stats.hypergeom.pmf(np.arange(lo, hi + 1), n, n_b, n_in) if n else 1.0
        dist = np.convolve(dist, pmf)
        observed += int(t.b_in)
    dist = dist / dist.sum()
    return float(min(1.0, dist[dist <= dist[observed] * (1 + 1e-7)].sum()))


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order.

    ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the p-values sorted
    ascending; flagging ``q <= alpha`` controls the false discovery rate at
    ``alpha`` for independent or positively dependent tests.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise InputError(f"p_values must be one-dimensional; got shape {p.shape}")
    if p.size == 0:
        return p.copy()
    if np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise InputError(f"p_values must lie in [0, 1]; got {p[(~np.isfinite(p)) | (p < 0) | (p > 1)][:3].tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    return q


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order.

    ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` over the p-values
    sorted ascending; flagging ``p~ <= alpha`` controls the family-wise error
    rate at ``alpha`` under any dependence.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise InputError(f"p_values must be one-dimensional; got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise InputError(f"p_values must lie in [0, 1]; got {p[(~np.isfinite(p)) | (p < 0) | (p > 1)][:3].tolist()}")
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate(p[order] * (m - np.arange(m))), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


@dataclasses.dataclass(frozen=True)
class LogOdds:
    """Log odds ratio (B vs A, inside vs outside the cluster) with its CI."""

    estimate: float
    low: float
    high: float
    corrected: bool  # True when 0.5 was added to every cell


def log_odds_ratio(table: ShareTable, confidence: float = 0.95) -> LogOdds:
    """``log((b_in a_out) / (a_in b_out))`` with a Woolf confidence interval.

    The standard error is ``sqrt(1/b_in + 1/a_in + 1/b_out + 1/a_out)``; if a
    cell is zero, 0.5 is added to all four cells first.
    """
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must lie strictly between 0 and 1; got {confidence!r}")
    cells = [float(table.b_in), float(table.a_in), float(table.b_out), float(table.a_out)]
    corrected = min(cells) == 0.0
    if corrected:
        cells = [c + 0.5 for c in cells]
    b_in, a_in, b_out, a_out = cells
    est = math.log(b_in) + math.log(a_out) - math.log(a_in) - math.log(b_out)
    se = math.sqrt(sum(1.0 / c for c in cells))
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    return LogOdds(est, est - z * se, est + z * se, corrected)
