"""What the store reads from its manifest, parsed once when a store is opened.

The store needs a few of the featurize settings recorded in ``manifest.json``
(shard size, storage dtype, projection, batch size, method); it reads them
here as plain values and knows nothing of the gradient engine that wrote
them (:class:`gradtrace.config.FeaturizeConfig` is the writer's view of the
same fields).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..errors import StoreError

STORE_DTYPES = ("float16", "float32", "float64")
# The projection kinds a store can hold; part of the store format (a reader lays out rows by it).
PROJECTION_KINDS = ("none", "factored", "dense", "kronecker")
# How featurize batches the examples of a shard: in file order, or sorted by length (less padding).
BATCH_ORDERS = ("file", "length")
# Config fields added after stores were first written, with the value a manifest without them means.
LEGACY_CONFIG = {"batch_order": "file", "exact_norms": True}


def with_legacy_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest's (or a writer's) ``config`` section with the fields added
    since stores were first written filled in with what their absence means
    (:data:`LEGACY_CONFIG`), so that equal settings compare equal however
    they were written."""
    return {**LEGACY_CONFIG, **config}


@dataclasses.dataclass(frozen=True)
class StoreSettings:
    """The manifest's ``config`` fields a reader of the store needs."""

    shard_size: int
    dtype: str
    projection: Mapping[str, Any]
    batch_size: int
    method: str
    batch_order: str = "file"
    exact_norms: bool = True  # False: the norms' second column (exact squared gradient norm) was not computed (zeros)

    @property
    def projection_kind(self) -> str:
        return str(self.projection.get("kind", "none"))

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> "StoreSettings":
        config = manifest.get("config")
        if not isinstance(config, Mapping):
            raise StoreError("the store manifest has no 'config' section")
        try:
            return cls(
                shard_size=int(config["shard_size"]), dtype=str(config["dtype"]),
                projection=dict(config.get("projection") or {"kind": "none"}),
                batch_size=int(config["batch_size"]), method=str(config.get("method", "auto")),
                batch_order=str(config.get("batch_order", LEGACY_CONFIG["batch_order"])),
                exact_norms=bool(config.get("exact_norms", LEGACY_CONFIG["exact_norms"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"the store manifest's 'config' section is incomplete or malformed: {exc!r}") from exc


def dict_differences(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted paths at which two JSON-like values differ."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            out.update(dict_differences(old.get(key, "<absent>"), new.get(key, "<absent>"), path))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = {}
        for i, (a, b) in enumerate(zip(old, new)):
            out.update(dict_differences(a, b, f"{prefix}[{i}]"))
        return out
    return {} if old == new else {prefix or "<root>": (old, new)}
