"""What the user tells gradtrace: how to compute a per-example loss, and which
scalar behaviour of the model to trace.

A :class:`Task` turns a batch into one loss value per example. Per-example
gradients of that loss are the training-side features of TracIn. A
:class:`Behaviour` turns a batch of queries into one scalar per query; its
gradient is the query-side feature. The default behaviour is the task loss on
the query, so a positive TracIn score means "training on z lowered the loss on
the query" (z is a proponent).

Any object with a matching ``per_example_loss`` method is a Task, and any
callable ``f(model, batch) -> Tensor[b]`` is a Behaviour; the classes here are
ready-made ones. A Task may also define ``collate(examples) -> batch`` when its
examples are not tensors (text, say); gradtrace then uses it to build batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError


@runtime_checkable
class Task(Protocol):
    """Computes the training loss of each example in a batch.

    ``per_example_loss(model, batch)`` must return a 1-D tensor with one value
    per example, each depending only on its own example (no batch statistics),
    so that per-example gradients can be taken in one vectorised pass.
    """

    def per_example_loss(self, model: nn.Module, batch: Any) -> Tensor: ...


@runtime_checkable
class Behaviour(Protocol):
    """The scalar being traced, one value per query in the batch.

    An optional attribute ``direction`` says which way the behaviour counts:
    ``"increase"`` (the default for any callable: a log-probability, a margin,
    a probe score) or ``"decrease"`` (a loss). Scores are signed so that a
    positive score always means "a training step on this example moved the
    behaviour in its direction" (a proponent).
    """

    def __call__(self, model: nn.Module, batch: Any) -> Tensor: ...


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """Cross-entropy of a classifier ``model(inputs) -> logits`` on
    ``(inputs, labels)`` batches."""

    def per_example_loss(self, model: nn.Module, batch: Any) -> Tensor:
        inputs, labels = batch[0], batch[1]
        return F.cross_entropy(model(inputs), labels, reduction="none")


@dataclasses.dataclass(frozen=True)
class LossBehaviour:
    """The task's own loss on the query (the TracIn default).

    A positive score means a training step on the example lowered this loss.
    """

    task: Any
    direction: str = "decrease"

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        return self.task.per_example_loss(model, batch)


@dataclasses.dataclass(frozen=True)
class LogitMarginBehaviour:
    """Logit of the label minus the largest other logit (higher: more confident
    in the label). A positive score means the training example raised it."""

    direction: str = "increase"

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        inputs, labels = batch[0], batch[1]
        logits = model(inputs)
        own = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
        return own - others.max(dim=1).values


def resolve_behaviour(behaviour: Behaviour | Callable[..., Tensor] | None, task: Task) -> Behaviour:
    """The behaviour to trace: the task loss when none is given."""
    if behaviour is None:
        return LossBehaviour(task)
    if not callable(behaviour):
        raise InputError(f"behaviour must be callable as f(model, batch) -> Tensor[b]; got {type(behaviour).__name__}")
    return behaviour


def behaviour_sign(behaviour: object) -> float:
    """+1 for behaviours that count when they decrease (losses), -1 otherwise.

    TracIn's raw product ``<grad L(z), grad B(q)>`` predicts how much a step on
    z *lowers* B(q); multiplying the query gradient by this sign makes every
    positive score a proponent.
    """
    direction = getattr(behaviour, "direction", "increase")
    if direction not in ("increase", "decrease"):
        raise InputError(f"behaviour.direction must be 'increase' or 'decrease'; got {direction!r}")
    return 1.0 if direction == "decrease" else -1.0


def check_task(task: object) -> Task:
    if not callable(getattr(task, "per_example_loss", None)):
        raise InputError(
            f"task must have a per_example_loss(model, batch) method; got {type(task).__name__}"
        )
    return task  # type: ignore[return-value]


def describe(obj: object) -> str:
    """A stable, human-readable identity of a task or behaviour for manifests."""
    cls = type(obj)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = ", ".join(
            f"{f.name}={describe(getattr(obj, f.name)) if _is_component(getattr(obj, f.name)) else repr(getattr(obj, f.name))}"
            for f in dataclasses.fields(obj)
        )
        return f"{name}({fields})"
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return name


def _is_component(value: object) -> bool:
    return dataclasses.is_dataclass(value) or hasattr(value, "per_example_loss")
