"""The executor seam: who computes which shards, and who scans which rows.

A shard (one checkpoint, one range of examples) is the unit of work of a
gradient store. The code that decides *what* to do and the code that decides
*where* it runs meet here:

* :func:`gradtrace.featurize` opens or creates the store through
  :meth:`Executor.setup`, plans the shards still missing as a list of
  :class:`ShardTask` and hands them to :meth:`Executor.run` with a
  :class:`ShardWorker` (load a checkpoint into the model; compute and write
  one shard). The worker does not know which process runs it.
* :class:`gradtrace.Attributor` scans the store's shard ranges through
  :meth:`Executor.scan`, which yields the score blocks of the ranges this
  process takes; the attributor merges them (e.g. its running top-k) and
  combines the per-process results with :meth:`Executor.gather`.

:class:`LocalExecutor` does everything in this process, one shard after
another, grouped by checkpoint so that each checkpoint is loaded once; its
store is byte-identical to what featurize wrote before the seam existed.

:class:`gradtrace.execution_dist.DistributedExecutor` (torch.distributed)
is the same four methods over the ranks of a process group: ``setup`` runs
on rank 0 first (it creates the store), then, after a barrier, on the other
ranks (which open it); ``run`` keeps the tasks ``i`` with
``i % world_size == rank`` and then does what ``LocalExecutor.run`` does (the
store's shard files are written atomically and independently, so ranks never
coordinate writes), with a barrier at the end; ``scan`` keeps the ranges
``ranges[rank::world_size]``; ``gather`` is ``all_gather_object``, so each
rank's top-k is merged into the global one. ``is_main`` is true in the one
process that prints (rank 0); ``share(tasks)`` is what this process computes
(:func:`split`: the fixed rule), which its progress bar counts.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

T = TypeVar("T")
B = TypeVar("B")


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard to compute: checkpoint index and example range ``[start, stop)``."""

    checkpoint: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


class ShardWorker(Protocol):
    """What an executor calls to compute shards."""

    def load(self, checkpoint: int) -> None:
        """Make ``checkpoint`` the current one (load its weights)."""

    def compute(self, task: ShardTask) -> None:
        """Compute ``task`` at the current checkpoint and write it to the store."""


class Executor(Protocol):
    """Where shards are computed and scanned (see the module docstring)."""

    @property
    def is_main(self) -> bool:
        """True in the one process that prints progress and results."""

    def share(self, tasks: Sequence[ShardTask]) -> list[ShardTask]:
        """The tasks of ``tasks`` this process computes (what its progress counts)."""

    def setup(self, make: Callable[[bool], T]) -> T:
        """Run a set-up step (create or open the store) and return its result.
        ``make(first)``: ``first`` is true in the process that opens the store
        before the others (it alone repairs and cleans it), false in those
        that join it afterwards."""

    def run(self, tasks: Sequence[ShardTask], worker: ShardWorker) -> None:
        """Compute the tasks this process takes."""

    def scan(self, ranges: Sequence[tuple[int, int]], score: Callable[[int, int], Iterable[B]]) -> Iterator[B]:
        """Yield ``score(start, stop)``'s blocks for the ranges this process takes."""

    def gather(self, value: T) -> list[T]:
        """Every process's ``value`` (this process's first)."""


def split(tasks: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The fixed rule that splits work over ``world_size`` processes: the
    entries ``i`` with ``i % world_size == rank``."""
    return [t for i, t in enumerate(tasks) if i % world_size == rank]


def by_checkpoint(tasks: Iterable[ShardTask]) -> list[tuple[int, list[ShardTask]]]:
    """Tasks grouped by checkpoint, checkpoints in increasing order, tasks in
    the order given."""
    groups: dict[int, list[ShardTask]] = {}
    for task in tasks:
        groups.setdefault(task.checkpoint, []).append(task)
    return sorted(groups.items())


class LocalExecutor:
    """Everything in this process, one shard after another."""

    is_main = True

    def share(self, tasks: Sequence[ShardTask]) -> list[ShardTask]:
        return list(tasks)

    def setup(self, make: Callable[[bool], T]) -> T:
        return make(True)

    def run(self, tasks: Sequence[ShardTask], worker: ShardWorker) -> None:
        for checkpoint, group in by_checkpoint(tasks):
            worker.load(checkpoint)
            for task in group:
                worker.compute(task)

    def scan(self, ranges: Sequence[tuple[int, int]], score: Callable[[int, int], Iterable[B]]) -> Iterator[B]:
        for start, stop in ranges:
            yield from score(start, stop)

    def gather(self, value: T) -> list[T]:
        return [value]
