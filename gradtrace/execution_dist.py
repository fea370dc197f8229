"""Many processes, many machines: the torch.distributed executor.

:class:`DistributedExecutor` is the :class:`~gradtrace.execution.Executor` of
a run launched as several processes (``torchrun``, ``accelerate launch``,
SLURM ``srun``):

* ``setup`` runs on rank 0 first (it creates or opens the store, repairs it,
  cleans up after interrupted writers) and then on the other ranks (which
  join it as writers with the same settings); every rank has opened the
  store before any rank goes on;
* ``run`` takes rank 0's list of missing shards and keeps the tasks ``i``
  with ``i % world_size == rank``; shard files are written atomically and
  independently, so ranks never coordinate writes. All ranks meet at the
  end; a rank that failed is reported on every rank. A rank that dies
  leaves whole shards only: running the same command again (or torchrun's
  own restart) computes the rest, and the store is byte-identical to a
  one-process run;
* ``scan`` keeps the shard ranges ``ranges[rank::world_size]``;
* ``gather`` is ``all_gather_object`` (this rank's value first), so each
  rank's running top-k is merged into the global one.

:func:`launched_executor` is what the command line uses: a
:class:`~gradtrace.execution.LocalExecutor` when the process was started
alone, else this executor over a process group it initialises from the
launcher's environment (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` of torchrun
and accelerate, or ``SLURM_STEP_NUM_TASKS``/``SLURM_PROCID``/``SLURM_LOCALID`` with
``MASTER_ADDR``/``MASTER_PORT`` under srun). CPU runs use the gloo backend
and CUDA runs NCCL, each rank on ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import torch

from .devices import resolve_device
from .errors import InputError, PeerError
from .execution import Executor, LocalExecutor, ShardTask, ShardWorker, split

T = TypeVar("T")
B = TypeVar("B")

DEFAULT_MASTER_PORT = "29500"


def launch_environment(env: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` when this process is one of several
    started by a launcher (torchrun, accelerate, srun), else None."""
    env = dict(os.environ) if env is None else env
    # srun sets SLURM_STEP_NUM_TASKS for the tasks of a job step; a batch script's own shell has SLURM_NTASKS and
    # SLURM_PROCID=0 too, and a process started there without srun is one process, not rank 0 of many
    for world, rank, local in (("WORLD_SIZE", "RANK", "LOCAL_RANK"), ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID")):
        if world in env and rank in env:
            try:
                w, r, lr = int(env[world]), int(env[rank]), int(env.get(local, "0"))
            except ValueError:
                raise InputError(f"environment: {world}={env[world]!r}, {rank}={env[rank]!r} must be integers") from None
            if w < 1 or not 0 <= r < w:
                raise InputError(f"environment: {rank}={r} is not a rank of {world}={w}")
            return (r, w, lr) if w > 1 else None
    return None


@contextlib.contextmanager
def launched_executor(device: str | torch.device | None, option: str = "--device") -> Iterator[tuple[Executor, torch.device | None]]:
    """The executor and this process's device for a command started with
    ``--device device``: alone, a :class:`LocalExecutor` and the device as
    named; under a launcher, a :class:`DistributedExecutor` (the process
    group initialised here, and destroyed at the end of the block) and, for
    ``cuda`` or ``auto`` on a CUDA machine, ``cuda:LOCAL_RANK``."""
    import torch.distributed as dist

    started = dist.is_available() and not dist.is_initialized()
    executor, resolved = executor_for(device, option)
    try:
        yield executor, resolved
    finally:
        if isinstance(executor, DistributedExecutor) and started and dist.is_initialized():
            dist.destroy_process_group()


def executor_for(device: str | torch.device | None, option: str = "--device") -> tuple[Executor, torch.device | None]:
    """As :func:`launched_executor`, without destroying the process group."""
    launched = launch_environment()
    resolved = resolve_device(device, option)
    if launched is None:
        return LocalExecutor(), resolved
    rank, world, local_rank = launched
    if resolved is not None and resolved.type == "cuda":
        named = str(device).strip().lower()
        if named in ("cuda", "auto"):
            if local_rank >= torch.cuda.device_count():
                raise InputError(f"{option} {device}: LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} CUDA device(s)")
            resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    return DistributedExecutor.start(rank, world, "nccl" if resolved is not None and resolved.type == "cuda" else "gloo"), resolved


class DistributedExecutor:
    """Shards and scan ranges split over the ranks of a torch.distributed
    process group (see the module docstring). Make it with :meth:`start`, or
    directly when the default process group is already initialised."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise InputError("DistributedExecutor needs an initialised torch.distributed process group (see DistributedExecutor.start)")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    @classmethod
    def start(cls, rank: int, world_size: int, backend: str) -> "DistributedExecutor":
        """Initialise the default process group from the environment (unless
        it is already) and return the executor over it."""
        import torch.distributed as dist

        if not dist.is_initialized():
            os.environ.setdefault("RANK", str(rank))
            os.environ.setdefault("WORLD_SIZE", str(world_size))
            if "MASTER_ADDR" not in os.environ:
                raise InputError(
                    "environment: MASTER_ADDR is not set; under srun set it to the first node's host name "
                    "(export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)), "
                    "or launch with torchrun"
                )
            os.environ.setdefault("MASTER_PORT", DEFAULT_MASTER_PORT)
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, tasks: Sequence[ShardTask]) -> list[ShardTask]:
        return split(tasks, self.rank, self.world_size)  # on rank 0, of the list every rank splits

    def setup(self, make: Callable[[bool], T]) -> T:
        first = self._together((lambda: make(True)) if self.rank == 0 else None, "setting up")
        rest = self._together((lambda: make(False)) if self.rank != 0 else None, "setting up")
        return first if self.rank == 0 else rest  # type: ignore[return-value]

    def run(self, tasks: Sequence[ShardTask], worker: ShardWorker) -> None:
        shared = [list(tasks)]
        self._dist.broadcast_object_list(shared, src=0)  # rank 0's plan: every rank splits the same list
        mine = split(shared[0], self.rank, self.world_size)
        self._together(lambda: LocalExecutor().run(mine, worker), "computing shards")

    def scan(self, ranges: Sequence[tuple[int, int]], score: Callable[[int, int], Iterable[B]]) -> Iterator[B]:
        for start, stop in list(ranges)[self.rank :: self.world_size]:
            yield from score(start, stop)

    def gather(self, value: T) -> list[T]:
        values: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(values, value)
        return [values[self.rank]] + [v for r, v in enumerate(values) if r != self.rank]

    def _together(self, step: Callable[[], T] | None, what: str) -> T | None:
        """Run ``step`` here (if given), then learn from every rank whether it
        succeeded: this rank's own error is raised as it is, another rank's
        as a :class:`PeerError` naming it. A barrier in either case."""
        result: T | None = None
        error: BaseException | None = None
        try:
            result = step() if step is not None else None
        except Exception as exc:  # reported to the other ranks, then raised
            error = exc
        failures = self.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        ranks = [r for r in range(self.world_size) if r != self.rank]
        failed = [(r, msg) for r, msg in zip(ranks, failures[1:]) if msg is not None]
        if failed:
            r, msg = failed[0]
            raise PeerError(f"rank {r} failed {what}: {msg.splitlines()[0] if msg else ''}")
        return result
