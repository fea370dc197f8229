"""The registry of score methods: ``variant=NAME`` resolves here."""

from __future__ import annotations

from typing import Any

from ...errors import InputError
from .base import ScoreMethod

_METHODS: dict[str, ScoreMethod] = {}


def register_method(method: ScoreMethod, *, replace: bool = False) -> ScoreMethod:
    """Make ``method`` available as ``variant=method.name``; returns it."""
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not name:
        raise InputError(f"a score method needs a non-empty string name; got {name!r}")
    for attr in ("meaning", "projections", "transforms_queries", "check", "query_transform", "prepare"):
        if not hasattr(method, attr):
            raise InputError(f"score method {name!r} lacks {attr!r} (see gradtrace.scoring.methods.ScoreMethod)")
    if name in _METHODS and not replace:
        raise InputError(f"a score method named {name!r} is registered already; pass replace=True to replace it")
    _METHODS[name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a registered method (for tests and plug-ins)."""
    if name not in _METHODS:
        raise InputError(f"no score method named {name!r} is registered; available: {available_methods()}")
    del _METHODS[name]


def available_methods() -> tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    return tuple(_METHODS)


def get_method(variant: Any) -> ScoreMethod:
    """The method named ``variant``, or ``variant`` itself when it is a method object."""
    if isinstance(variant, str):
        if variant not in _METHODS:
            raise InputError(f"variant must be one of {available_methods()}; got {variant!r}")
        return _METHODS[variant]
    if hasattr(variant, "prepare") and isinstance(getattr(variant, "name", None), str):
        return variant
    raise InputError(f"variant must be a method name, one of {available_methods()}, or a score method object; got {variant!r}")
