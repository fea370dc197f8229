"""Stop rules: when a monitored metric says the loop has gone off the rails.

A :class:`StopRule` watches one metric of the results table
(``"<monitor>.<metric>"``) round by round:

* ``threshold``: a breach is a value above ``above`` (or below ``below``);
  the rule fires at the ``k``-th consecutive breach.
* ``cusum``: one-sided CUSUM (Page, 1954) of the deviations from ``target``
  (default: the metric's round-0 value), ``S_t = max(0, S_{t-1} + d (x_t -
  target) - slack)`` with ``d = +1`` for ``direction="up"`` and ``-1`` for
  ``"down"``; it fires when ``S_t > limit``. ``slack`` absorbs noise, so
  small fluctuations never accumulate.

:func:`first_stop` returns the earliest :class:`StopEvent` over all rules:
which rule and metric, at which round, the value, the bound and by how much
it was exceeded.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from ..configbase import ConfigBase, check_unknown_keys, positive_int
from ..errors import InputError

KINDS = ("threshold", "cusum")


def _number(value: Any, field: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{field} must be a finite number; got {value!r} ({type(value).__name__})")
    return float(value)


@dataclasses.dataclass(frozen=True)
class StopRule(ConfigBase):
    """One rule on one metric (see the module docstring)."""

    metric: str
    kind: str = "threshold"
    above: float | None = None
    below: float | None = None
    k: int = 1
    direction: str = "up"
    slack: float = 0.0
    limit: float | None = None
    target: float | None = None
    field: str = "stop"

    _checks = {"k": positive_int}
    _not_saved = ("field",)

    def _field_name(self, name: str) -> str:
        return f"{self.field}.{name}"

    def _check(self) -> None:
        f = self.field
        if not isinstance(self.metric, str) or "." not in self.metric:
            raise InputError(f"{f}.metric must be '<monitor>.<metric>' such as 'nll.tail_share'; got {self.metric!r}")
        if self.kind not in KINDS:
            raise InputError(f"{f}.kind must be one of {KINDS}; got {self.kind!r}")
        for name in ("above", "below", "limit", "target"):
            object.__setattr__(self, name, _number(getattr(self, name), f"{f}.{name}", optional=True))
        object.__setattr__(self, "slack", _number(self.slack, f"{f}.slack"))
        if self.kind == "threshold":
            if (self.above is None) == (self.below is None):
                raise InputError(f"{f}: a threshold rule needs exactly one of 'above' and 'below'")
        else:
            if self.limit is None or self.limit <= 0:
                raise InputError(f"{f}.limit must be a positive number for a cusum rule; got {self.limit!r}")
            if self.direction not in ("up", "down"):
                raise InputError(f"{f}.direction must be 'up' or 'down'; got {self.direction!r}")
            if self.slack < 0:
                raise InputError(f"{f}.slack must be >= 0; got {self.slack!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], field: str = "stop") -> "StopRule":  # type: ignore[override]
        """The rule of a ``[[stop]]`` table; ``field`` names it in errors."""
        check_unknown_keys(d, cls.saved_fields(), field)
        if "metric" not in d:
            raise InputError(f"{field}.metric is missing")
        return super().from_dict(d, where=field, field=field)

    def describe(self) -> str:
        if self.kind == "threshold":
            bound = f"> {self.above:g}" if self.above is not None else f"< {self.below:g}"
            return f"{self.metric} {bound}" + (f" for {self.k} consecutive rounds" if self.k > 1 else "")
        target = "round 0" if self.target is None else f"{self.target:g}"
        return f"CUSUM of {self.metric} {self.direction} from {target} (slack {self.slack:g}) > {self.limit:g}"

    def check(self, series: Sequence[tuple[int, float]]) -> "StopEvent | None":
        """The first round at which this rule fires on ``[(round, value), ...]``."""
        if self.kind == "threshold":
            run = 0
            for rnd, x in series:
                breach = x > self.above if self.above is not None else x < self.below  # type: ignore[operator]
                run = run + 1 if breach else 0
                if run >= self.k:
                    bound = self.above if self.above is not None else self.below
                    excess = x - bound if self.above is not None else bound - x  # type: ignore[operator]
                    return StopEvent(self.metric, rnd, x, float(bound), float(excess), self.describe())  # type: ignore[arg-type]
            return None
        if not series:
            return None
        target = self.target if self.target is not None else series[0][1]
        sign = 1.0 if self.direction == "up" else -1.0
        s = 0.0
        for rnd, x in series:
            s = max(0.0, s + sign * (x - target) - self.slack)
            if s > self.limit:  # type: ignore[operator]
                return StopEvent(self.metric, rnd, x, float(self.limit), s - float(self.limit), self.describe(), cusum=s)  # type: ignore[arg-type]
        return None


@dataclasses.dataclass(frozen=True)
class StopEvent:
    """Why the loop stopped: ``metric`` breached ``rule`` at ``round`` with
    ``value``; ``excess`` is how far past ``bound`` it went (for CUSUM, how far
    the cumulative sum ``cusum`` went past its limit)."""

    metric: str
    round: int
    value: float
    bound: float
    excess: float
    rule: str
    cusum: float | None = None

    @property
    def monitor(self) -> str:
        return self.metric.split(".", 1)[0]

    def message(self) -> str:
        extra = f", CUSUM {self.cusum:.4g}" if self.cusum is not None else ""
        return (f"stopped at round {self.round}: monitor {self.monitor!r} breached '{self.rule}' "
                f"({self.metric} = {self.value:.4g}{extra}; past the bound {self.bound:.4g} by {self.excess:.4g})")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["monitor"] = self.monitor
        d["message"] = self.message()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StopEvent":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def first_stop(rules: Sequence[StopRule], rows: Sequence[Mapping[str, float]]) -> StopEvent | None:
    """The earliest event of any rule over the results rows (each has a
    ``round`` and the metrics); ties go to the rule listed first."""
    best: StopEvent | None = None
    for rule in rules:
        series = []
        for row in rows:
            if rule.metric not in row:
                available = sorted(k for k in row if k != "round")
                raise InputError(f"{rule.field}.metric {rule.metric!r} is not a measured metric; available: {available}")
            series.append((int(row["round"]), float(row[rule.metric])))
        event = rule.check(series)
        if event is not None and (best is None or event.round < best.round):
            best = event
    return best
