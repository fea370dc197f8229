"""A store's JSON files are checked like user input when they are read.

``manifest.json`` and the ids files may have been edited by hand, damaged or
written by something else: every field the store uses is checked for type
and range, and a violation is a :class:`~gradtrace.errors.StoreError` naming
the file, the field, the rule and the value, never a ``KeyError`` later on.
"""

from __future__ import annotations

import collections
import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import StoreError
from .settings import BATCH_ORDERS, PROJECTION_KINDS, STORE_DTYPES

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
SEGMENT_KEYS = ("fingerprint", "ids_file", "start", "stop")


def _show(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bad(path: Path, field: str, rule: str, value: Any) -> StoreError:
    return StoreError(f"{str(path)!r}: field {field!r} must be {rule}; got {_show(value)}")


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _int(path: Path, field: str, value: Any, low: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
        raise bad(path, field, "an integer" + (f" >= {low}" if low is not None else ""), value)
    return value


def _obj(path: Path, field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(path, field, "a JSON object", value)
    return value


def _list(path: Path, field: str, value: Any, nonempty: bool = False) -> list[Any]:
    if not isinstance(value, list) or (nonempty and not value):
        raise bad(path, field, "a non-empty list" if nonempty else "a list", value)
    return value


def _str(path: Path, field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise bad(path, field, "a non-empty string", value)
    return value


def check_manifest(path: Path, manifest: Any, fmt: str, version: int) -> None:
    """Raise :class:`StoreError` unless ``manifest`` (parsed from ``path``) is
    a store manifest of format ``fmt`` ``version`` whose fields obey their rules."""
    if not isinstance(manifest, dict):
        raise StoreError(f"{str(path)!r} must hold a JSON object (a gradtrace store manifest); got {_kind(manifest)}")
    if manifest.get("format") != fmt:
        raise StoreError(f"{str(path)!r} is not a gradtrace gradient store manifest")
    if manifest.get("format_version") != version:
        raise StoreError(
            f"{str(path)!r} has format_version {manifest.get('format_version')!r}; this gradtrace reads version {version}"
        )
    for key in ("config", "model", "checkpoints", "feature_dim", "segments"):
        if key not in manifest:
            raise StoreError(f"{str(path)!r}: required field {key!r} is missing")
    feature_dim = _int(path, "feature_dim", manifest["feature_dim"], 1)
    _check_config(path, manifest["config"])
    _check_model(path, _obj(path, "model", manifest["model"]), feature_dim)
    checkpoints = _list(path, "checkpoints", manifest["checkpoints"], nonempty=True)
    for i, ckpt in enumerate(checkpoints):
        _check_checkpoint(path, f"checkpoints[{i}]", _obj(path, f"checkpoints[{i}]", ckpt))
    _check_segments(path, _list(path, "segments", manifest["segments"]))
    if manifest.get("checkpoint_fingerprints") is not None:
        fps = _list(path, "checkpoint_fingerprints", manifest["checkpoint_fingerprints"])
        if len(fps) != len(checkpoints):
            raise bad(path, "checkpoint_fingerprints", f"a list of {len(checkpoints)} (one per checkpoint)", fps)
        for i, fp in enumerate(fps):
            if fp is not None:
                _check_fingerprint(path, f"checkpoint_fingerprints[{i}]", fp, nested=True)


def _check_config(path: Path, config: Any) -> None:
    """The featurize settings a reader of the store relies on (the store does not
    import the gradient engine, so the writer's own checks are not repeated here)."""
    _obj(path, "config", config)
    for key in ("shard_size", "batch_size"):
        _int(path, f"config.{key}", config.get(key), 1)
    if config.get("dtype") not in STORE_DTYPES:
        raise bad(path, "config.dtype", f"one of {STORE_DTYPES}", config.get("dtype"))
    projection = _obj(path, "config.projection", config.get("projection"))
    if projection.get("kind") not in PROJECTION_KINDS:
        raise bad(path, "config.projection.kind", f"one of {PROJECTION_KINDS}", projection.get("kind"))
    if "batch_order" in config and config["batch_order"] not in BATCH_ORDERS:
        raise bad(path, "config.batch_order", f"one of {BATCH_ORDERS}", config["batch_order"])
    if "exact_norms" in config and not isinstance(config["exact_norms"], bool):
        raise bad(path, "config.exact_norms", "true or false", config["exact_norms"])


def _check_model(path: Path, model: dict[str, Any], feature_dim: int) -> None:
    names = _list(path, "model.param_names", model.get("param_names"), nonempty=True)
    for i, name in enumerate(names):
        _str(path, f"model.param_names[{i}]", name)
    _str(path, "model.fingerprint", model.get("fingerprint"))
    layout = _list(path, "model.factor_layout", model.get("factor_layout", []))
    width = 0
    for i, pair in enumerate(layout):
        if (
            not isinstance(pair, list) or len(pair) != 2
            or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in pair)
        ):
            raise bad(path, f"model.factor_layout[{i}]", "a pair [d_in + 1, d_out] of positive integers", pair)
        width += pair[0] + pair[1]
    if layout and width != feature_dim:
        raise bad(path, "model.factor_layout", f"pairs summing to feature_dim ({feature_dim})", layout)


def _check_checkpoint(path: Path, field: str, ckpt: dict[str, Any]) -> None:
    _str(path, f"{field}.path", ckpt.get("path"))
    lr = ckpt.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise bad(path, f"{field}.lr", "a positive finite number", lr)
    if ckpt.get("step") is not None:
        _int(path, f"{field}.step", ckpt["step"])


def _check_segments(path: Path, segments: list[Any]) -> None:
    expected_start = 0
    for i, seg in enumerate(segments):
        field = f"segments[{i}]"
        seg = _obj(path, field, seg)
        if sorted(seg) != sorted(SEGMENT_KEYS):
            raise bad(path, field, f"an object with exactly the keys {list(SEGMENT_KEYS)}", sorted(seg))
        start = _int(path, f"{field}.start", seg["start"])
        if start != expected_start:
            rule = "0 (segments start at the first example)" if i == 0 else f"{expected_start} (the previous segment's stop)"
            raise bad(path, f"{field}.start", rule, start)
        expected_start = _int(path, f"{field}.stop", seg["stop"], start + 1)
        _str(path, f"{field}.fingerprint", seg["fingerprint"])
        ids_file = _str(path, f"{field}.ids_file", seg["ids_file"])
        parts = PurePosixPath(ids_file).parts
        if PurePosixPath(ids_file).is_absolute() or "\\" in ids_file or not parts or ".." in parts:
            raise bad(path, f"{field}.ids_file", "a relative path inside the store", ids_file)


def _check_fingerprint(path: Path, field: str, fp: Any, nested: bool) -> None:
    fp = _obj(path, field, fp)
    _int(path, f"{field}.size", fp.get("size"), 0)
    _int(path, f"{field}.mtime_ns", fp.get("mtime_ns"))
    if not isinstance(fp.get("sha256"), str) or not _SHA256.match(fp["sha256"]):
        raise bad(path, f"{field}.sha256", "64 lowercase hex digits", fp.get("sha256"))
    if "files" in fp:
        files = _obj(path, f"{field}.files", fp["files"])
        if not nested:
            raise bad(path, f"{field}.files", "absent (only a folder's fingerprint lists files)", files)
        for name, sub in files.items():
            _check_fingerprint(path, f"{field}.files[{name!r}]", sub, nested=False)


def read_ids_file(path: Path, n: int) -> tuple[list[str], list[Any]]:
    """The ``n`` ids and tags of one segment from its ids file, checked."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(
            f"ids file {str(path)!r} is missing: the store cannot name its examples without it; "
            "restore the file, or featurize into a new directory"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"ids file {str(path)!r} is not valid JSON ({exc}); restore the file, or featurize into a new directory") from None
    if not isinstance(data, dict):
        raise StoreError(f"ids file {str(path)!r} must hold a JSON object; got {_kind(data)}")
    ids = data.get("ids")
    if not isinstance(ids, list) or len(ids) != n or not all(isinstance(i, str) for i in ids):
        raise bad(path, "ids", f"a list of {n} strings (one per example of the segment)", ids)
    tags = data.get("tags")
    if tags is None:
        return ids, [None] * n
    if not isinstance(tags, list) or len(tags) != n:
        raise bad(path, "tags", f"null or a list of {n} tags", tags)
    return ids, tags


def check_unique_ids(path: Path, ids: list[str], seen: set[str]) -> None:
    """Raise unless the ids of the ids file ``path`` are unique and none is in
    ``seen`` (the ids of the segments before it); adds them to ``seen``."""
    clash = [i for i, c in collections.Counter(ids).items() if c > 1 or i in seen]
    if clash:
        raise bad(path, "ids", "unique in the store (no id twice, none shared with another segment)", clash[:5])
    seen.update(ids)
