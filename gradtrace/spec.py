"""How a user's own model enters the CLI: ``--task path/to/file.py:make_task``.

``make_task()`` returns a :class:`TaskSpec`: a model factory, the task, the
checkpoints, the training set and (optionally) queries, ids and tags.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from .checkpoints import CheckpointRef
from .errors import InputError


@dataclasses.dataclass(frozen=True)
class ExampleView:
    """What the explorer (``gradtrace serve``) shows of one example: a
    ``text``, a 2-D grey-scale ``image`` (dark = high), or both, and a short
    ``caption`` (a label, say). All of it is untrusted and shown escaped."""

    text: str | None = None
    image: Any = None
    caption: str = ""


@dataclasses.dataclass
class TaskSpec:
    """Everything the CLI needs to featurize and query a user's model."""

    model: Callable[[], nn.Module]
    task: Any
    checkpoints: Sequence[CheckpointRef]
    train: Any
    queries: Any = None
    train_ids: Sequence[str] | None = None
    train_tags: Sequence[Any] | None = None
    query_ids: Sequence[str] | None = None
    behaviour: Any = None
    checkpoint_loader: Callable[[nn.Module, CheckpointRef], Any] | None = None
    #: For the explorer: what training example ``i`` / query ``i`` looks like
    #: (default: the example's tensors, summarised).
    train_view: Callable[[int], ExampleView] | None = None
    query_view: Callable[[int], ExampleView] | None = None


def import_target(target: Any, what: str) -> Callable[..., Any]:
    """The function named by ``path/to/file.py:function`` or
    ``package.module:function``; ``what`` names the option in errors."""
    if not isinstance(target, str) or ":" not in target:
        raise InputError(f"{what} must look like path/to/file.py:function; got {target!r}")
    where, _, name = target.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise InputError(f"{what}: file {where!r} does not exist")
        mod_name = f"gradtrace_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise InputError(f"{what}: cannot import {where!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise InputError(f"{what}: cannot import module {where!r}: {exc}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputError(f"{what}: {where!r} has no function {name!r}")
    return fn


def load_task_spec(target: str) -> TaskSpec:
    """Import ``file.py:function`` (or ``package.module:function``) and call it."""
    fn = import_target(target, "--task")
    result = fn()
    if not isinstance(result, TaskSpec):
        raise InputError(f"--task: {target} must return a gradtrace.spec.TaskSpec; got {type(result).__name__}")
    return result
