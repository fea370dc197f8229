"""The gradient store: features written once, queried many times.

Layout of a store directory::

    manifest.json                 settings, model/task/data fingerprints, segments
    ids/segment_000.json          example ids and tags of each appended segment
    ckpt_000/rows_000000000_000004096.features.npy   unit-norm feature rows
    ckpt_000/rows_000000000_000004096.norms.npy      [projected norm, exact squared norm]
    ckpt_000/rows_000000000_000004096.json           shard record: checksums

A shard is the unit of work: one checkpoint and one range of examples. Its
record is written last, by atomic rename, so a shard either has a record (it
is complete and its files match their checksums) or it is missing; several
workers can write different shards of one store at once. Feature rows are
stored with unit norm and their norms kept apart in float64: float16 storage
then loses no range, and the cosine variant costs nothing.

The store reads the settings it needs from the manifest once, when it is
opened (:class:`~gradtrace.store.settings.StoreSettings`); it imports nothing
of the gradient engine.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from ..checkpoints import CheckpointRef
from ..errors import ConfigMismatchError, InputError, StoreError
from .io import atomic_write_bytes, file_sha256, json_bytes, npy_bytes, remove_stale_temporaries
from .settings import StoreSettings, dict_differences

if TYPE_CHECKING:
    from ..config import FeaturizeConfig

FORMAT = "gradtrace.gradient-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
COMPATIBILITY_KEYS = ("config", "model", "task", "checkpoints", "feature_dim")


@dataclasses.dataclass(frozen=True)
class Segment:
    """A block of examples added in one featurize call."""

    start: int
    stop: int
    fingerprint: str
    ids_file: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class GradientStore:
    """A store directory (see the module docstring). Open with :meth:`open`
    or make with :meth:`create`; :func:`gradtrace.featurize` does both."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = Path(root).resolve()
        self.manifest = manifest
        self.settings = StoreSettings.from_manifest(manifest)
        self._config: FeaturizeConfig | None = None
        self._ids: list[str] | None = None
        self._tags: list[Any] | None = None

    # -- opening ------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> "GradientStore":
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise StoreError(f"{str(root)!r} is not a gradient store: {MANIFEST} is missing")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{str(path)!r} is not valid JSON: {exc}") from exc
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{str(path)!r} is not a gradtrace gradient store manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{str(path)!r} has format_version {manifest.get('format_version')!r}; "
                f"this gradtrace reads version {FORMAT_VERSION}"
            )
        return cls(root, manifest)

    @classmethod
    def create(cls, root: str | Path, settings: Mapping[str, Any]) -> "GradientStore":
        root = Path(root)
        if (root / MANIFEST).exists():
            raise StoreError(f"a store already exists at {str(root)!r}")
        if root.exists() and any(root.iterdir()):
            raise InputError(f"out: {str(root)!r} exists and is not empty; choose a new directory for the store")
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **settings, "segments": []}
        store = cls(root, manifest)
        store._write_manifest()
        return store

    def check_compatible(self, settings: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigMismatchError` showing each differing setting."""
        old = {k: self.manifest.get(k) for k in COMPATIBILITY_KEYS}
        new = {k: json.loads(json.dumps(settings.get(k))) for k in COMPATIBILITY_KEYS}
        diff = dict_differences(old, new)
        if diff:
            raise ConfigMismatchError(f"the gradient store at {str(self.root)!r}", diff)

    # -- settings -----------------------------------------------------------
    @property
    def config(self) -> FeaturizeConfig:
        """The :class:`gradtrace.FeaturizeConfig` the store was written with,
        built once on first use (the store itself reads :attr:`settings`)."""
        if self._config is None:
            from ..config import FeaturizeConfig  # the writer's view; kept out of the store's imports

            self._config = FeaturizeConfig.from_dict(self.manifest["config"])
        return self._config

    @property
    def checkpoints(self) -> list[CheckpointRef]:
        return [CheckpointRef.from_dict(c) for c in self.manifest["checkpoints"]]

    @property
    def learning_rates(self) -> np.ndarray:
        return np.array([c["lr"] for c in self.manifest["checkpoints"]], dtype=np.float64)

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    @property
    def factor_layout(self) -> list[tuple[int, int]]:
        """``(d_in + 1, d_out)`` per layer for factored stores; empty otherwise."""
        return [tuple(pair) for pair in self.manifest["model"].get("factor_layout", [])]  # type: ignore[misc]

    @property
    def param_names(self) -> list[str]:
        return list(self.manifest["model"]["param_names"])

    @property
    def segments(self) -> list[Segment]:
        return [Segment(**s) for s in self.manifest["segments"]]

    @property
    def n_examples(self) -> int:
        segs = self.segments
        return segs[-1].stop if segs else 0

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._load_ids()
        assert self._ids is not None
        return self._ids

    @property
    def tags(self) -> list[Any]:
        if self._tags is None:
            self._load_ids()
        assert self._tags is not None
        return self._tags

    def _load_ids(self) -> None:
        ids: list[str] = []
        tags: list[Any] = []
        for seg in self.segments:
            data = json.loads((self.root / seg.ids_file).read_text())
            ids.extend(data["ids"])
            tags.extend(data["tags"] if data.get("tags") is not None else [None] * (seg.stop - seg.start))
        self._ids, self._tags = ids, tags

    # -- segments -------------------------------------------------------------
    def add_segment(self, fingerprint: str, ids: Sequence[str], tags: Sequence[Any] | None) -> Segment:
        """Register ``len(ids)`` new examples after the existing ones."""
        existing = set(self.ids)
        clash = [i for i in ids if i in existing]
        if clash:
            raise InputError(f"ids already in the store at {str(self.root)!r}: {clash[:5]!r}")
        start = self.n_examples
        index = len(self.segments)
        ids_file = f"ids/segment_{index:03d}.json"
        (self.root / "ids").mkdir(exist_ok=True)
        atomic_write_bytes(self.root / ids_file, json_bytes({"ids": list(ids), "tags": None if tags is None else list(tags)}))
        seg = Segment(start, start + len(ids), fingerprint, ids_file)
        self.manifest["segments"].append(seg.to_dict())
        self._write_manifest()
        self._ids = self._tags = None
        return seg

    def _write_manifest(self) -> None:
        atomic_write_bytes(self.root / MANIFEST, json_bytes(self.manifest))

    # -- shards ---------------------------------------------------------------
    def shard_ranges(self, segment: Segment | None = None) -> list[tuple[int, int]]:
        """Example ranges of the shards, each inside one segment."""
        size = self.settings.shard_size
        segs = [segment] if segment is not None else self.segments
        return [(a, min(a + size, s.stop)) for s in segs for a in range(s.start, s.stop, size)]

    def _stem(self, ckpt: int, start: int, stop: int) -> Path:
        return self.root / f"ckpt_{ckpt:03d}" / f"rows_{start:09d}_{stop:09d}"

    def has_shard(self, ckpt: int, start: int, stop: int) -> bool:
        return self._stem(ckpt, start, stop).with_suffix(".json").is_file()

    def missing_shards(self, segment: Segment | None = None) -> list[tuple[int, int, int]]:
        """``(checkpoint, start, stop)`` of every shard not yet written."""
        return [
            (c, a, b)
            for c in range(len(self.manifest["checkpoints"]))
            for a, b in self.shard_ranges(segment)
            if not self.has_shard(c, a, b)
        ]

    def has_any_shard(self) -> bool:
        return any(self.root.glob("ckpt_*/rows_*.json"))

    def discard_unwritten(self) -> None:
        """Remove a store that holds no shard yet (its manifest and ids only)."""
        if self.has_any_shard():
            raise StoreError(f"store {str(self.root)!r} holds shards; refusing to discard it")
        for seg in self.segments:
            (self.root / seg.ids_file).unlink(missing_ok=True)
        (self.root / MANIFEST).unlink()
        self.clean_temporaries()
        for d in sorted(self.root.rglob("*"), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()

    @property
    def complete(self) -> bool:
        return bool(self.segments) and not self.missing_shards()

    def write_shard(self, ckpt: int, start: int, stop: int, unit_rows: np.ndarray, norms: np.ndarray) -> None:
        """Write one shard: feature rows (store dtype; unit norm unless
        factored) and float64 ``[row_norm, exact_squared_norm]`` per example."""
        m = stop - start
        dtype = np.dtype(self.settings.dtype)
        if unit_rows.shape != (m, self.feature_dim) or unit_rows.dtype != dtype:
            raise StoreError(f"shard rows must be {(m, self.feature_dim)} {dtype}; got {unit_rows.shape} {unit_rows.dtype}")
        if norms.shape != (m, 2) or norms.dtype != np.float64:
            raise StoreError(f"shard norms must be {(m, 2)} float64; got {norms.shape} {norms.dtype}")
        stem = self._stem(ckpt, start, stop)
        stem.parent.mkdir(parents=True, exist_ok=True)
        files = {}
        for suffix, array in ((".features.npy", unit_rows), (".norms.npy", norms)):
            files[stem.name + suffix] = atomic_write_bytes(stem.with_name(stem.name + suffix), npy_bytes(array))
        record = {"checkpoint": ckpt, "start": start, "stop": stop, "sha256": files}
        atomic_write_bytes(stem.with_suffix(".json"), json_bytes(record))

    def _require(self, ckpt: int, start: int, stop: int) -> Path:
        if not self.has_shard(ckpt, start, stop):
            raise StoreError(
                f"store {str(self.root)!r} is incomplete: shard checkpoint {ckpt}, rows {start}-{stop} is missing; "
                "re-run featurize with the same arguments to finish it"
            )
        return self._stem(ckpt, start, stop)

    def features(self, ckpt: int, start: int, stop: int) -> np.ndarray:
        """Unit-norm feature rows of one shard, memory-mapped."""
        stem = self._require(ckpt, start, stop)
        return np.load(stem.with_name(stem.name + ".features.npy"), mmap_mode="r")

    def norms(self, ckpt: int, start: int, stop: int) -> np.ndarray:
        """``[projected_norm, exact_squared_norm]`` per example of one shard."""
        stem = self._require(ckpt, start, stop)
        return np.load(stem.with_name(stem.name + ".norms.npy"))

    def iter_shards(self) -> Iterator[tuple[int, int, int]]:
        for a, b in self.shard_ranges():
            for c in range(len(self.manifest["checkpoints"])):
                yield c, a, b

    def verify(self) -> list[str]:
        """Check every shard file against its recorded checksum; returns problems."""
        problems = []
        for c, a, b in self.iter_shards():
            if not self.has_shard(c, a, b):
                problems.append(f"missing shard checkpoint {c} rows {a}-{b}")
                continue
            stem = self._stem(c, a, b)
            record = json.loads(stem.with_suffix(".json").read_text())
            for name, digest in record["sha256"].items():
                path = stem.with_name(name)
                if not path.is_file():
                    problems.append(f"{name}: file missing")
                elif file_sha256(path) != digest:
                    problems.append(f"{name}: checksum mismatch")
        return problems

    def clean_temporaries(self) -> int:
        return remove_stale_temporaries(self.root)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
