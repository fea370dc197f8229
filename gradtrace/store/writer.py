"""Opening a store for writing: open, create or check it under its locks.

:func:`open_for_writing` is what a featurize run calls instead of
``GradientStore.open``/``create``; the locking protocol it follows is
described in :mod:`gradtrace.store.lock`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigMismatchError, InputError, StoreError
from ..fingerprint import checkpoint_fingerprint
from .gradient_store import MANIFEST, GradientStore, require_new_directory
from .lock import DEFAULT_TIMEOUT, WritersLock, manifest_lock


@dataclasses.dataclass
class WriterSession:
    """An open writing session: ``store`` may be written until :meth:`close`
    (or the end of the ``with`` block)."""

    store: GradientStore
    prepared: Any  # what ``prepare(store)`` returned
    created: bool  # this session made the store
    repaired: list[tuple[int, int, int, str]]  # shards whose records were deleted: they will be rewritten
    lock: WritersLock

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> "WriterSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_for_writing(
    root: str | Path,
    settings: Mapping[str, Any],
    *,
    prepare: Callable[[GradientStore], Any] | None = None,
    verify: bool = True,
    repair: bool = True,
    check_checkpoints: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> WriterSession:
    """Open the store at ``root`` for writing with ``settings`` (the manifest
    fields of :func:`gradtrace.featurize.store_settings`), under the manifest lock:

    * no store there: create it, with the checkpoints' fingerprints;
    * a store with no shard yet and no other writer: discard it and create
      it afresh (an earlier run failed before its first shard);
    * otherwise check its settings (:class:`ConfigMismatchError`, saying so
      when another process is writing it right now), its checkpoint files
      against their fingerprints (:class:`~gradtrace.errors.CheckpointError`),
      and, with ``repair``, delete the records of shards that fail their
      checksum so that they are written again; with no other writer, delete
      temporaries left by interrupted ones.

    ``prepare(store)``, if given, runs still under the lock (find or add the
    data's segment there, so that two writers agree on it); its result is
    ``session.prepared``. Returns the open :class:`WriterSession`; close it
    (or use ``with``) when done writing. ``timeout``: seconds to wait for the
    manifest lock (None: no limit).
    """
    root = Path(root)
    if not (root / MANIFEST).exists():
        _require_new_directory_or_store(root, timeout)  # before making any file in a directory that is not ours
    root.mkdir(parents=True, exist_ok=True)
    with manifest_lock(root, timeout):
        lock = WritersLock(root)
        try:
            alone = lock.try_exclusive()
            store = _existing(root, settings, alone, verify, check_checkpoints)
            created = store is None
            if store is None:
                fingerprints = [checkpoint_fingerprint(c["path"]) for c in settings["checkpoints"]]
                store = GradientStore.create(root, {**settings, "checkpoint_fingerprints": fingerprints})
                store.verify_reads = verify
            repaired = store.repair() if repair and not created else []
            if alone and not created:
                store.clean_temporaries()
            prepared = prepare(store) if prepare is not None else None
            lock.share(timeout)
        except BaseException:
            lock.release()
            raise
    return WriterSession(store, prepared, created, repaired, lock)


def _require_new_directory_or_store(root: Path, timeout: float | None) -> None:
    """Refuse a non-empty directory that holds no store. A store that another
    writer is creating right now (its files appear before its manifest, all
    under the manifest lock) is no reason to refuse: look again holding that lock."""
    try:
        require_new_directory(root)
    except (InputError, StoreError):
        with manifest_lock(root, timeout):  # a directory lock: no file is made (except on NFS)
            if not (root / MANIFEST).exists():
                raise


def _existing(
    root: Path, settings: Mapping[str, Any], alone: bool, verify: bool, check_checkpoints: bool,
) -> GradientStore | None:
    """The store at ``root`` if there is one to keep, checked; None if a new one is to be made."""
    if not (root / MANIFEST).exists():
        return None
    store = GradientStore.open(root, verify=verify)
    if alone and not store.has_any_shard():
        store.discard_unwritten()  # nothing was computed yet: start afresh with these settings
        return None
    try:
        store.check_compatible(settings)
    except ConfigMismatchError as exc:
        if alone:
            raise
        raise ConfigMismatchError(
            f"the gradient store at {str(root)!r}, which another process is writing right now,", exc.differences
        ) from None
    if check_checkpoints:
        store.check_checkpoints()
    return store
