"""Statistics of a behavioural diff: is a cluster's share of texts from model B
different from B's share overall?

Per cluster we hold a 2 x 2 table of validation texts::

                 from B    from A
    in cluster    b_in      a_in
    elsewhere     b_out     a_out

and test it with Fisher's exact test (default; conditions on both margins) or an
exact binomial test of ``b_in`` out of ``b_in + a_in`` against B's overall share.
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
