"""Stop rules fire exactly at a planted breach and not on noise."""

from __future__ import annotations

import numpy as np
import pytest

from gradtrace.errors import InputError
from gradtrace.loop.stop import StopEvent, StopRule, first_stop


def rows_from(values, metric="m.x"):
    return [{"round": float(t), metric: float(v)} for t, v in enumerate(values)]


def noisy(n, seed, shift_at=None, shift=0.0, sd=0.01, base=0.5):
    rng = np.random.default_rng(seed)
    v = base + rng.normal(0, sd, size=n)
    if shift_at is not None:
        v[shift_at:] += shift
    return v


@pytest.mark.parametrize("seed", range(5))
def test_threshold_fires_at_the_planted_breach(seed):
    rows = rows_from(noisy(20, seed, shift_at=12, shift=0.2))
    event = first_stop([StopRule("m.x", above=0.6)], rows)
    assert event is not None and event.round == 12
    assert event.excess == pytest.approx(rows[12]["m.x"] - 0.6)
    assert event.monitor == "m" and "round 12" in event.message()
    # k consecutive breaches: fires k-1 rounds later
    assert first_stop([StopRule("m.x", above=0.6, k=3)], rows).round == 14


@pytest.mark.parametrize("seed", range(5))
def test_cusum_fires_at_the_planted_breach_and_never_on_noise(seed):
    rule = StopRule("m.x", kind="cusum", direction="up", slack=0.03, limit=0.1)
    rows = rows_from(noisy(20, seed, shift_at=12, shift=0.2))
    event = first_stop([rule], rows)
    assert event is not None and event.round == 12  # (0.2 - 0.03 ± noise) > 0.1 at once
    assert event.cusum == pytest.approx(event.excess + 0.1)
    # a long noise-only series: slack 3 sd absorbs it
    assert first_stop([rule], rows_from(noisy(500, 100 + seed))) is None
    # a downward rule ignores an upward shift
    assert first_stop([StopRule("m.x", kind="cusum", direction="down", slack=0.03, limit=0.1)], rows) is None


def test_cusum_accumulates_a_small_sustained_shift():
    # shift of 0.05 per round, slack 0.02 -> S grows by 0.03 a round: 0.03, 0.06, 0.09, 0.12 -> fires 4th round
    rows = rows_from([0.5] * 5 + [0.55] * 10)
    event = first_stop([StopRule("m.x", kind="cusum", slack=0.02, limit=0.1)], rows)
    assert event.round == 8
    assert event.cusum == pytest.approx(0.12)


@pytest.mark.parametrize("seed", range(5))
def test_threshold_does_not_fire_on_noise(seed):
    assert first_stop([StopRule("m.x", above=0.6), StopRule("m.x", below=0.4)], rows_from(noisy(500, seed))) is None


def test_earliest_rule_wins_and_below_rules():
    rows = [{"round": float(t), "a.x": float(t), "b.y": 1.0 - 0.1 * t} for t in range(10)]
    event = first_stop([StopRule("a.x", above=6.5), StopRule("b.y", below=0.55)], rows)
    assert (event.metric, event.round) == ("b.y", 5)
    assert event.excess == pytest.approx(0.55 - 0.5)
    assert StopEvent.from_dict(event.to_dict()) == event


def test_rule_errors_name_the_field():
    with pytest.raises(InputError, match=r"stop\[0\]\.above must be a finite number; got 'high'"):
        StopRule.from_dict({"metric": "nll.mean", "above": "high"}, "stop[0]")
    with pytest.raises(InputError, match="exactly one of 'above' and 'below'"):
        StopRule("nll.mean")
    with pytest.raises(InputError, match=r"stop\.limit"):
        StopRule("nll.mean", kind="cusum")
    with pytest.raises(InputError, match="unknown fields"):
        StopRule.from_dict({"metric": "nll.mean", "above": 1, "abvoe": 2}, "stop[1]")
    with pytest.raises(InputError, match="not a measured metric"):
        first_stop([StopRule("nll.nope", above=1)], [{"round": 0.0, "nll.mean": 1.0}])
