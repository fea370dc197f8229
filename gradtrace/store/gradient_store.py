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
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from ..checkpoints import CheckpointRef
from ..errors import CheckpointError, ConfigMismatchError, InputError, StoreError
from ..fingerprint import checkpoint_fingerprint, fingerprint_change
from . import integrity
from .io import atomic_write_bytes, file_sha256, json_bytes, npy_bytes, remove_stale_temporaries, write_temporary
from .lock import LOCK_FILES, manifest_lock, other_writers_active
from .settings import StoreSettings, dict_differences, with_legacy_defaults
from .validate import check_manifest, check_unique_ids, read_ids_file

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


@dataclasses.dataclass(frozen=True)
class SkippedExample:
    """A training example left out by ``featurize(..., on_nonfinite="skip")``:
    its loss or gradient was not finite at ``checkpoint``. Its rows and norms
    there are zeros, and every score of it (all checkpoints) reads as 0."""

    index: int  # position in the store
    id: str
    checkpoint: int
    checkpoint_path: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class GradientStore:
    """A store directory (see the module docstring). Open with :meth:`open`
    or make with :meth:`create`; :func:`gradtrace.featurize` does both."""

    def __init__(self, root: Path, manifest: dict[str, Any], verify: bool = True):
        self.root = Path(root).resolve()
        self.manifest = manifest
        self.settings = StoreSettings.from_manifest(manifest)
        self._config: FeaturizeConfig | None = None
        #: check every shard file read against its record's sha256 (once per process per file version)
        self.verify_reads = verify
        self._ids: list[str] | None = None
        self._tags: list[Any] | None = None
        self._skipped: list[tuple[int, int, str]] | None = None

    # -- opening ------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, verify: bool = True) -> "GradientStore":
        """Open the store at ``root``; its manifest is checked field by field.
        ``verify`` (default on; also the attribute ``store.verify_reads``) checks
        each shard file read against its recorded sha256."""
        return cls(root, read_manifest(root), verify=verify)

    @classmethod
    def create(cls, root: str | Path, settings: Mapping[str, Any]) -> "GradientStore":
        root = Path(root)
        require_new_directory(root)
        root.mkdir(parents=True, exist_ok=True)
        with manifest_lock(root):
            require_new_directory(root)
            manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **settings, "segments": []}
            manifest = json.loads(json_bytes(manifest))  # in memory exactly as on disk (lists, not tuples)
            check_manifest(root / MANIFEST, manifest, FORMAT, FORMAT_VERSION)
            store = cls(root, manifest)
            store._write_manifest()
        return store

    @classmethod
    def writer(cls, root: str | Path, settings: Mapping[str, Any], **kwargs: Any) -> Any:
        """Open, create or check the store at ``root`` for writing, under its
        locks; see :func:`gradtrace.store.writer.open_for_writing`."""
        from .writer import open_for_writing

        return open_for_writing(root, settings, **kwargs)

    def check_compatible(self, settings: Mapping[str, Any]) -> None:
        """Raise :class:`ConfigMismatchError` showing each differing setting."""
        old = {k: self.manifest.get(k) for k in COMPATIBILITY_KEYS}
        new = {k: json.loads(json.dumps(settings.get(k))) for k in COMPATIBILITY_KEYS}
        for side in (old, new):  # a field added since stores were first written compares as what its absence means
            if isinstance(side["config"], Mapping):
                side["config"] = with_legacy_defaults(side["config"])
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

            # the order a store without the field was written in is explicit here (None would mean "decide")
            self._config = FeaturizeConfig.from_dict({**self.manifest["config"], "batch_order": self.settings.batch_order})
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
        seen: set[str] = set()
        for seg in self.segments:
            path = self.root / seg.ids_file
            seg_ids, seg_tags = read_ids_file(path, seg.stop - seg.start)
            check_unique_ids(path, seg_ids, seen)
            ids.extend(seg_ids)
            tags.extend(seg_tags)
        self._ids, self._tags = ids, tags

    # -- segments -------------------------------------------------------------
    def add_segment(self, fingerprint: str, ids: Sequence[str], tags: Sequence[Any] | None) -> Segment:
        """Register ``len(ids)`` new examples after the existing ones (under
        the manifest lock, after reading the manifest again from disk)."""
        with manifest_lock(self.root):
            self.reload()
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

    def reload(self) -> None:
        """Read the manifest again from disk (checked). Raises
        :class:`StoreError` if another process replaced the store with one of
        other settings meanwhile."""
        fresh = read_manifest(self.root)
        changed = [k for k in COMPATIBILITY_KEYS if fresh.get(k) != self.manifest.get(k)]
        if changed:
            raise StoreError(
                f"the store at {str(self.root)!r} was replaced by another process with other settings "
                f"(fields {changed} differ); open it again"
            )
        self.manifest = fresh
        self._ids = self._tags = None
        self._skipped = None

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
        """Remove a store that holds no shard yet (its manifest and ids only).
        Refused while another writing session is open on it."""
        with manifest_lock(self.root):
            if self.has_any_shard():
                raise StoreError(f"store {str(self.root)!r} holds shards; refusing to discard it")
            if other_writers_active(self.root):
                raise StoreError(f"store {str(self.root)!r} is being written by another process; refusing to discard it")
            self.manifest = read_manifest(self.root)
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

    def write_shard(
        self, ckpt: int, start: int, stop: int, unit_rows: np.ndarray, norms: np.ndarray,
        skipped: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Write one shard: feature rows (store dtype; unit norm unless
        factored) and float64 ``[row_norm, exact_squared_norm]`` per example.
        ``skipped``: ``(store index, reason)`` of examples left out (their rows
        and norms must be zeros), kept in the shard's record; the record of a
        shard without any is as it always was."""
        m = stop - start
        dtype = np.dtype(self.settings.dtype)
        if unit_rows.shape != (m, self.feature_dim) or unit_rows.dtype != dtype:
            raise StoreError(f"shard rows must be {(m, self.feature_dim)} {dtype}; got {unit_rows.shape} {unit_rows.dtype}")
        if norms.shape != (m, 2) or norms.dtype != np.float64:
            raise StoreError(f"shard norms must be {(m, 2)} float64; got {norms.shape} {norms.dtype}")
        integrity.check_finite_norms(self._stem(ckpt, start, stop).with_suffix(".norms.npy"), norms, start)
        for index, _ in skipped:
            if not start <= index < stop or norms[index - start].any() or unit_rows[index - start].any():
                raise StoreError(f"skipped example {index} must be a row of shard {start}-{stop} written as zeros")
        stem = self._stem(ckpt, start, stop)
        stem.parent.mkdir(parents=True, exist_ok=True)
        # Files go to temporaries first; they are published, record last, under the
        # manifest lock and only if no other writer published this shard meanwhile.
        temporaries: dict[Path, Path] = {}
        files = {}
        try:
            for suffix, array in ((".features.npy", unit_rows), (".norms.npy", norms)):
                path = stem.with_name(stem.name + suffix)
                temporaries[path], files[path.name] = write_temporary(path, npy_bytes(array))
            record: dict[str, Any] = {"checkpoint": ckpt, "start": start, "stop": stop, "sha256": files}
            if skipped:
                record["skipped"] = [{"index": int(i), "reason": str(r)} for i, r in sorted(skipped)]
            with manifest_lock(self.root):
                if self.has_shard(ckpt, start, stop):
                    return
                for path, tmp in temporaries.items():
                    os.replace(tmp, path)
                atomic_write_bytes(stem.with_suffix(".json"), json_bytes(record))
                self._skipped = None
        finally:
            for tmp in temporaries.values():
                tmp.unlink(missing_ok=True)

    def _require(self, ckpt: int, start: int, stop: int) -> Path:
        if not self.has_shard(ckpt, start, stop):
            raise StoreError(
                f"store {str(self.root)!r} is incomplete: shard checkpoint {ckpt}, rows {start}-{stop} is missing; "
                "re-run featurize with the same arguments to finish it"
            )
        return self._stem(ckpt, start, stop)

    def features(self, ckpt: int, start: int, stop: int) -> np.ndarray:
        """Unit-norm feature rows of one shard, memory-mapped (checked: see
        :mod:`gradtrace.store.integrity`)."""
        return self._read(ckpt, start, stop, ".features.npy", self.feature_dim, np.dtype(self.settings.dtype), mmap=True)

    def norms(self, ckpt: int, start: int, stop: int) -> np.ndarray:
        """``[projected_norm, exact_squared_norm]`` per example of one shard
        (checked to be finite, besides the checks of every read). The second
        column is zeros in a store featurized without exact norms
        (:attr:`has_exact_norms`); read it through :meth:`exact_sqnorms`."""
        norms = self._read(ckpt, start, stop, ".norms.npy", 2, np.dtype(np.float64), mmap=False)
        stem = self._stem(ckpt, start, stop)
        integrity.check_finite_norms(stem.with_name(stem.name + ".norms.npy"), norms, start, f" (checkpoint {ckpt}, rows {start}-{stop})")
        return norms

    @property
    def has_exact_norms(self) -> bool:
        """Whether featurize kept each example's exact (unprojected) squared
        gradient norm (``exact_norms``; the default). Without them the second
        column of :meth:`norms` holds zeros and :meth:`exact_sqnorms` refuses."""
        return self.settings.exact_norms

    def exact_sqnorms(self, ckpt: int, start: int, stop: int, why: str = "this") -> np.ndarray:
        """The exact squared gradient norm of each example of one shard (the
        second column of :meth:`norms`); an :class:`InputError` saying so
        when the store was featurized without them (``why`` names what needs them)."""
        if not self.settings.exact_norms:
            raise InputError(
                f"{why} needs the exact squared gradient norms, and the store at {str(self.root)!r} was featurized "
                "without them (exact_norms=False; CLI --no-exact-norms). Featurize again with exact_norms=True "
                "(the default) into a new directory, or use a method that scores from the stored features "
                "(fisher, kfac, ekfac)"
            )
        return self.norms(ckpt, start, stop)[:, 1]

    def _read(self, ckpt: int, start: int, stop: int, suffix: str, cols: int, dtype: np.dtype, mmap: bool) -> np.ndarray:
        stem = self._require(ckpt, start, stop)
        path = stem.with_name(stem.name + suffix)
        digest = self._record(ckpt, start, stop)[path.name] if self.verify_reads else None
        where = f" (checkpoint {ckpt}, rows {start}-{stop})"
        return integrity.open_npy(path, (stop - start, cols), dtype, digest, mmap=mmap, where=where)

    def _record(self, ckpt: int, start: int, stop: int) -> dict[str, str]:
        """The checked ``{file name: sha256}`` of a shard's record."""
        stem = self._stem(ckpt, start, stop)
        return integrity.read_shard_record(stem.with_suffix(".json"), ckpt, start, stop, _shard_files(stem))

    # -- examples left out ------------------------------------------------------
    def _skipped_entries(self) -> list[tuple[int, int, str]]:
        """``(index, checkpoint, reason)`` from every written shard's record, sorted (read once, then kept)."""
        if self._skipped is None:
            entries = []
            for c, a, b in self.iter_shards():
                if self.has_shard(c, a, b):
                    stem = self._stem(c, a, b)
                    skipped = integrity.read_shard_skipped(stem.with_suffix(".json"), c, a, b, _shard_files(stem))
                    entries += [(i, c, reason) for i, reason in skipped]
            self._skipped = sorted(entries)
        return self._skipped

    @property
    def skipped_examples(self) -> list[SkippedExample]:
        """Examples left out because a loss or gradient was not finite
        (``featurize(..., on_nonfinite="skip")``), one entry per example and
        checkpoint at which it was, by index. Every score of such an example
        reads as 0 (:attr:`skipped_indices`)."""
        ids, paths = self.ids, [c["path"] for c in self.manifest["checkpoints"]]
        return [SkippedExample(i, ids[i], c, paths[c], reason) for i, c, reason in self._skipped_entries()]

    @property
    def skipped_indices(self) -> np.ndarray:
        """Sorted store indices of the examples in :attr:`skipped_examples` (int64)."""
        return np.unique(np.array([i for i, _, _ in self._skipped_entries()], dtype=np.int64))

    def invalid_shards(self) -> list[tuple[int, int, int, str]]:
        """``(checkpoint, start, stop, problem)`` of every written shard whose
        record is malformed or whose files are missing, of the wrong shape or
        dtype, or fail their checksum (each file hashed once per process),
        and of those whose norms are not all finite (written before gradtrace
        refused non-finite values)."""
        bad = []
        for c, a, b in self.iter_shards():
            if not self.has_shard(c, a, b):
                continue
            try:
                digests = self._record(c, a, b)
                stem = self._stem(c, a, b)
                for suffix, cols, dtype in ((".features.npy", self.feature_dim, self.settings.dtype), (".norms.npy", 2, "float64")):
                    name = stem.name + suffix
                    array = integrity.open_npy(stem.with_name(name), (b - a, cols), np.dtype(dtype), digests[name], mmap=True)
                integrity.check_finite_norms(stem.with_name(name), np.asarray(array), a)
            except StoreError as exc:
                bad.append((c, a, b, integrity.describe(exc)))
        return bad

    def repair(self) -> list[tuple[int, int, int, str]]:
        """Delete the record of every shard :meth:`invalid_shards` lists (under
        the manifest lock), so :meth:`missing_shards` lists it again and a
        resumed featurize rewrites it. Returns what was found."""
        with manifest_lock(self.root):
            bad = self.invalid_shards()
            for c, a, b, _ in bad:
                self._stem(c, a, b).with_suffix(".json").unlink(missing_ok=True)
            self._skipped = None
        return bad

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
            try:
                record = self._record(c, a, b)
            except StoreError as exc:
                problems.append(integrity.describe(exc))
                continue
            for name, digest in record.items():
                path = stem.with_name(name)
                if not path.is_file():
                    problems.append(f"{name}: file missing")
                elif file_sha256(path) != digest:
                    problems.append(f"{name}: checksum mismatch")
                elif name.endswith(".norms.npy"):
                    try:
                        self.norms(c, a, b)
                    except StoreError as exc:
                        problems.append(integrity.describe(exc))
        return problems

    def clean_temporaries(self) -> int:
        """Delete temporaries of interrupted writers. Only call with no writer
        running (featurize does it when it holds the store alone)."""
        return remove_stale_temporaries(self.root)

    # -- checkpoint fingerprints -------------------------------------------------
    @property
    def checkpoint_fingerprints(self) -> list[dict[str, Any] | None] | None:
        """Per checkpoint, its files' fingerprint when the store was made
        (None for a path that was not a local file or folder); None for a
        store written before gradtrace recorded them."""
        return self.manifest.get("checkpoint_fingerprints")

    def record_checkpoint_fingerprints(self) -> None:
        """Fingerprint every checkpoint now (hashing its files) and save that
        in the manifest (under the manifest lock)."""
        with manifest_lock(self.root):
            self.reload()
            self.manifest["checkpoint_fingerprints"] = [checkpoint_fingerprint(c["path"]) for c in self.manifest["checkpoints"]]
            self._write_manifest()

    def check_checkpoints(self, indices: Sequence[int] | None = None) -> None:
        """Raise :class:`CheckpointError` if a checkpoint file differs from its
        recorded fingerprint (a file whose size and mtime are unchanged is
        trusted; others are hashed). A store without fingerprints passes
        with a one-line warning."""
        fps = self.checkpoint_fingerprints
        if fps is None:
            warnings.warn(
                f"gradtrace: the store at {str(self.root)!r} was written before checkpoint fingerprints were "
                "recorded; its checkpoint files cannot be checked for changes", UserWarning, stacklevel=2,
            )
            return
        for c in range(len(fps)) if indices is None else indices:
            path = self.manifest["checkpoints"][c]["path"]
            change = None if fps[c] is None else fingerprint_change(path, fps[c])
            if change is not None:
                raise CheckpointError(
                    f"checkpoint {c} ({path!r}) changed since the store at {str(self.root)!r} was made: {change}. "
                    "Its stored gradients belong to the old weights: restore the original file, "
                    "or featurize into a new directory"
                )

    #: the manifest fields a derived artefact (fitted factors) depends on
    FINGERPRINT_FIELDS = ("config", "model", "task", "checkpoints", "checkpoint_fingerprints", "feature_dim", "segments")

    def fingerprint(self) -> dict[str, str]:
        """sha256 of each manifest field in :attr:`FINGERPRINT_FIELDS`, as the
        manifest is now: what artefacts fitted on the store (Kronecker factors,
        whitening) record, so that a store changed since (other settings,
        checkpoints or appended examples) is detected field by field."""
        return {k: hashlib.sha256(json_bytes(self.manifest.get(k))).hexdigest() for k in self.FINGERPRINT_FIELDS}

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def content_fingerprint(self) -> str:
        """sha256 of what a reader of the store's rows sees: the settings
        (:data:`COMPATIBILITY_KEYS`), the segments and every shard's record
        (whose checksums name each shard file's bytes). It changes when
        examples are appended or a shard is rewritten with other bytes; a
        derived artefact (an index) keeps it to notice a changed store. Reads
        the records only, never the shard files. Raises :class:`StoreError`
        for an incomplete store."""
        h = hashlib.sha256(json_bytes({k: self.manifest.get(k) for k in (*COMPATIBILITY_KEYS, "segments")}))
        for c, a, b in self.iter_shards():
            self._require(c, a, b)
            h.update(json_bytes([c, a, b, self._record(c, a, b)]))
        return h.hexdigest()


def _shard_files(stem: Path) -> tuple[str, str]:
    return (stem.name + ".features.npy", stem.name + ".norms.npy")


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of the store at ``root``, parsed and checked field by field."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise StoreError(f"{str(root)!r} is not a gradient store: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    check_manifest(path, manifest, FORMAT, FORMAT_VERSION)
    return manifest


def require_new_directory(root: Path) -> None:
    if (root / MANIFEST).exists():
        raise StoreError(f"a store already exists at {str(root)!r}")
    if root.exists() and any(p.name not in LOCK_FILES for p in root.iterdir()):
        raise InputError(f"out: {str(root)!r} exists and is not empty; choose a new directory for the store")
