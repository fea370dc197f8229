"""Exceptions raised for problems a user can fix.

Every message names the field or file, the rule that was broken and the value
that broke it, so the user never has to read gradtrace's source to act on it.
"""

from __future__ import annotations


from typing import Sequence


def short_list(items: Sequence[object], limit: int = 8) -> str:
    """``repr`` of ``items`` as a list, cut after ``limit`` with a count of the rest (for messages)."""
    if len(items) <= limit:
        return repr(list(items))
    return repr(list(items[:limit]))[:-1] + f", ... ({len(items) - limit} more)]"


class GradtraceError(Exception):
    """Base class of every error gradtrace raises on purpose."""


class InputError(GradtraceError, ValueError):
    """An argument, a config field or a data file does not satisfy its rule."""


class CheckpointError(GradtraceError):
    """A checkpoint is missing or does not fit the model it is loaded into."""


class StoreError(GradtraceError):
    """A gradient store on disk is incomplete, corrupt or of another format."""


class PeerError(GradtraceError):
    """Another process of a distributed run failed; its own message says why."""


class ConfigMismatchError(GradtraceError):
    """An existing artefact was made with other settings than the ones given.

    ``differences`` maps each differing field (dotted path) to
    ``(on_disk, requested)``.
    """

    def __init__(self, what: str, differences: dict[str, tuple[object, object]]):
        self.differences = differences
        lines = [f"{what} was made with other settings; differences (on disk -> requested):"]
        for key, (old, new) in sorted(differences.items()):
            lines.append(f"  {key}: {old!r} -> {new!r}")
        super().__init__("\n".join(lines))


class MissingDependencyError(GradtraceError, ImportError):
    """An optional package needed for this feature is not installed."""

    def __init__(self, package: str, feature: str, install: str | None = None):
        hint = install or f"pip install {package}"
        super().__init__(f"{feature} needs the package {package!r}, which is not installed: {hint}")
