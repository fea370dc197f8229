"""One base for gradtrace's settings dataclasses.

A settings class is a frozen dataclass that derives from :class:`ConfigBase`
and declares its per-field rules in ``_checks`` (in the spirit of
scikit-learn's ``_parameter_constraints``)::

    @dataclasses.dataclass(frozen=True)
    class TrainConfig(ConfigBase):
        _checks = {"steps": positive_int, "lr": positive, "optimizer": one_of(OPTIMIZERS)}
        steps: int = 1000
        ...

        def _check(self) -> None:  # rules that involve several fields
            ...

and gets:

* list values of tuple-typed fields turned into tuples (configs read from
  JSON or TOML compare and hash like those built in Python; also when the
  type is a union with a tuple, e.g. ``str | tuple[str, ...]``), and a lone
  string into a tuple of one (not for such a union);
* a mapping given for a config-typed field built with that config's
  ``from_dict``; any other value that is not such a config refused;
* each ``_checks`` rule applied in order, then ``_check()``; a broken rule
  raises :class:`~gradtrace.errors.InputError` naming the field (with
  ``_prefix``, e.g. ``"cluster."``), the rule and the value;
* ``to_dict()``: plain JSON-ready data (nested configs as dicts, tuples as
  lists), fields in declaration order;
* ``from_dict(d)``: the inverse; nested configs (also inside ``dict`` and
  ``Optional`` fields) are rebuilt, and an unknown key raises InputError
  naming it.

A check is any ``check(value, name) -> None`` that raises InputError; the
ready-made ones below word their messages as gradtrace always has.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any, Callable, ClassVar, Mapping, Sequence

from .errors import InputError

#: ``check(value, name)``: raise InputError when ``value`` breaks the rule.
Check = Callable[[Any, str], None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any, name: str) -> None:
    """An integer >= 1 (not a bool)."""
    if not _is_int(value) or value < 1:
        raise InputError(f"{name} must be a positive integer; got {value!r}")


def non_negative_int(value: Any, name: str) -> None:
    """An integer >= 0 (not a bool)."""
    if not _is_int(value) or value < 0:
        raise InputError(f"{name} must be a non-negative integer; got {value!r}")


def int_at_least(minimum: int, why: str = "") -> Check:
    """An integer >= ``minimum`` (not a bool); ``why`` is added in parentheses."""
    reason = f" ({why})" if why else ""

    def check(value: Any, name: str) -> None:
        if not _is_int(value) or value < minimum:
            raise InputError(f"{name} must be an integer >= {minimum}{reason}; got {value!r}")

    return check


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(value: Any, name: str) -> None:
    """An integer (not a bool)."""
    if not _is_int(value):
        raise InputError(f"{name} must be an integer; got {value!r}")


def boolean(value: Any, name: str) -> None:
    """``True`` or ``False``."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false; got {value!r}")


def positive(value: Any, name: str) -> None:
    """A number > 0 (not a bool, not NaN)."""
    if not _is_number(value) or not value > 0:
        raise InputError(f"{name} must be positive; got {value!r}")


def non_negative(value: Any, name: str) -> None:
    """A number >= 0 (not a bool, not NaN)."""
    if not _is_number(value) or not value >= 0:
        raise InputError(f"{name} must be non-negative; got {value!r}")


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A number (not a bool) between ``low`` and ``high``, each end included
    unless ``*_open``; both ends open reads "strictly between"."""
    if low_open and high_open:
        rule = f"lie strictly between {low} and {high}"
    else:
        rule = f"lie in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def check(value: Any, name: str) -> None:
        ok = _is_number(value) and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
        if not ok:
            raise InputError(f"{name} must {rule}; got {value!r}")

    return check


def optional(check: Check) -> Check:
    """``None`` or a value that passes ``check``."""

    def optional_check(value: Any, name: str) -> None:
        if value is not None:
            check(value, name)

    return optional_check


def one_of(options: Sequence[Any]) -> Check:
    """One of ``options``."""

    def check(value: Any, name: str) -> None:
        if value not in options:
            raise InputError(f"{name} must be one of {tuple(options)}; got {value!r}")

    return check


def subset_of(options: Sequence[Any]) -> Check:
    """A non-empty tuple of values from ``options``."""

    def check(value: Any, name: str) -> None:
        if not value or isinstance(value, str) or any(v not in options for v in value):
            raise InputError(f"{name} must be a non-empty subset of {tuple(options)}; got {value!r}")

    return check


def integers(value: Any, name: str) -> None:
    """A non-empty tuple of integers (not bools)."""
    if not value or not all(_is_int(v) for v in value):
        raise InputError(f"{name} must be a non-empty tuple of integers; got {value!r}")


def positive_ints(value: Any, name: str) -> None:
    """A non-empty tuple of integers >= 1 (not bools)."""
    if not value or any(not _is_int(v) or v < 1 for v in value):
        raise InputError(f"{name} must be a non-empty tuple of positive integers; got {value!r}")


def check_unknown_keys(d: Mapping[str, Any], known: set[str] | Sequence[str], where: str) -> None:
    """InputError naming the keys of ``d`` outside ``known``."""
    unknown = sorted(set(d) - set(known), key=str)
    if unknown:
        raise InputError(f"{where}: unknown fields {unknown}; allowed: {sorted(known)}")


class ConfigBase:
    """Mixin for frozen settings dataclasses; see the module docstring."""

    #: field name -> check, applied in this order after list-to-tuple coercion.
    _checks: ClassVar[Mapping[str, Check]] = {}
    #: put before a field's name in messages, e.g. ``"cluster."``.
    _prefix: ClassVar[str] = ""
    #: fields left out of ``to_dict`` and refused by ``from_dict``.
    _not_saved: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value, hint = getattr(self, f.name), _unwrap_optional(hints.get(f.name))
            if isinstance(value, (list, str)) and typing.get_origin(hint) is tuple:
                object.__setattr__(self, f.name, (value,) if isinstance(value, str) else tuple(value))
            elif isinstance(value, list) and _union_with_tuple(hint):
                object.__setattr__(self, f.name, tuple(value))
            elif isinstance(hint, type) and issubclass(hint, ConfigBase) and value is not None and not isinstance(value, hint):
                if not isinstance(value, Mapping):
                    raise InputError(f"{self._field_name(f.name)} must be a {hint.__name__} or a mapping of its fields; "
                                     f"got {type(value).__name__}")
                object.__setattr__(self, f.name, hint.from_dict(value, where=self._field_name(f.name)))
        for name, check in self._checks.items():
            check(getattr(self, name), self._field_name(name))
        self._check()

    def _field_name(self, name: str) -> str:
        """How messages name field ``name`` (default: ``_prefix + name``)."""
        return self._prefix + name

    def _check(self) -> None:
        """Rules involving several fields; runs after ``_checks``."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data: nested configs as dicts, tuples as lists."""
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if f.name not in self._not_saved}

    @classmethod
    def saved_fields(cls) -> list[str]:
        """The fields :meth:`to_dict` writes and :meth:`from_dict` reads."""
        return [f.name for f in dataclasses.fields(cls) if f.init and f.name not in cls._not_saved]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str | None = None, **extra: Any) -> Any:
        """The config whose :meth:`to_dict` is ``d``; ``where`` names it in
        errors (default: ``_prefix`` or the class name); ``extra``: more
        constructor arguments (not read from ``d``)."""
        where = where or cls._prefix.rstrip(".") or cls.__name__
        if not isinstance(d, Mapping):
            raise InputError(f"{where}: settings must be a mapping of field names to values; got {type(d).__name__}")
        check_unknown_keys(d, cls.saved_fields(), where)
        hints = _hints(cls)
        return cls(**{k: from_plain(hints.get(k), v) for k, v in d.items()}, **extra)


def to_plain(value: Any) -> Any:
    """``value`` as JSON-ready data (configs via their ``to_dict``)."""
    if hasattr(value, "to_dict") and dataclasses.is_dataclass(value):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def from_plain(hint: Any, value: Any) -> Any:
    """``value`` read back as type ``hint``: configs from dicts (also as the
    values of a ``dict[str, Config]`` and inside ``Optional``), tuples from lists."""
    hint = _unwrap_optional(hint)
    if value is None or hint is None:
        return value
    if isinstance(hint, type) and issubclass(hint, ConfigBase) and isinstance(value, Mapping):
        return hint.from_dict(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict and len(args) == 2 and isinstance(value, Mapping):
        return {k: from_plain(args[1], v) for k, v in value.items()}
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _union_with_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and any(
        typing.get_origin(a) is tuple for a in typing.get_args(hint))


def _unwrap_optional(hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation; a field whose annotation cannot be
    resolved at run time is left out (its values are taken as they come)."""
    if cls not in _HINTS:
        import sys

        namespace = {**vars(sys.modules.get(cls.__module__, typing)), cls.__name__: cls}
        hints = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            try:
                hints[f.name] = eval(f.type, namespace) if isinstance(f.type, str) else f.type  # noqa: S307 - annotations
            except Exception:
                continue
        _HINTS[cls] = hints
    return _HINTS[cls]


__all__ = [
    "ConfigBase", "Check", "positive_int", "non_negative_int", "int_at_least", "integer", "boolean", "positive", "non_negative",
    "in_range", "optional", "one_of", "subset_of", "integers", "positive_ints", "check_unknown_keys", "to_plain", "from_plain",
]
