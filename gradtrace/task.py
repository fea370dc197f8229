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
examples are not tensors (text, say); gradtrace then uses it to build batches,
and ``example_length(example) -> int`` (its tokens, say) when examples differ
in size: featurize's ``batch_order="length"`` then batches examples of similar
length together, so that batches pad little.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

import torch
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


class ExampleError(InputError):
    """One example of a batch breaks a rule. ``index`` is its position in the
    batch; gradtrace re-raises it naming the example's position in the data."""

    def __init__(self, index: int, problem: str):
        self.index = index
        self.problem = problem
        super().__init__(f"example {index} of the batch {problem}")


def check_labels(labels: Any, n_classes: int) -> Tensor:
    """Class-index labels, checked to lie in ``[0, n_classes)``.

    Raises :class:`ExampleError` naming the first example whose label is
    outside (``-100`` included: gradtrace does not mask labels). Inside a
    ``torch.func`` transform (the ``vmap`` method) values cannot be looked at;
    the caller then poisons such examples (see :class:`ClassificationTask`).
    """
    if not isinstance(labels, Tensor) or labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        what = type(labels).__name__ if not isinstance(labels, Tensor) else f"a {labels.dtype} tensor"
        raise InputError(f"labels: classification labels must be an integer tensor of class indices; got {what}")
    if not _inside_transform():
        bad = ((labels < 0) | (labels >= n_classes)).reshape(-1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            value = int(labels.reshape(-1)[i])
            raise ExampleError(
                i, f"has label {value}, outside the class indices [0, {n_classes}) of this {n_classes}-class model"
                + (" (-100 masks a label in cross_entropy, which would give the example a loss and gradient of 0; "
                   "gradtrace does not mask classification labels: leave the example out or give it its class)"
                   if value == -100 else ""),
            )
    return labels


def _inside_transform() -> bool:
    """Whether a torch.func transform (vmap, grad) is running, where tensors' values cannot be read."""
    functorch = getattr(torch._C, "_functorch", None)
    peek = getattr(functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """Cross-entropy of a classifier ``model(inputs) -> logits`` on
    ``(inputs, labels)`` batches.

    Labels are class indices in ``[0, n_classes)``; any other value is an
    :class:`~gradtrace.errors.InputError` naming the example, the value and
    the range. That includes ``-100``: ``cross_entropy`` would silently mask
    such an example (loss, gradient and self-influence 0), so a masked label
    is refused rather than scored as "no influence". (Language-model tasks
    mask prompt tokens with ``-100`` on purpose; that is theirs, not this
    task's.) Under the ``vmap`` method labels cannot be read while the
    gradient is traced: an invalid label then makes that example's loss NaN,
    which featurize refuses (or skips) as a non-finite loss naming it.
    Soft labels (float class probabilities shaped like the logits) are
    passed to ``cross_entropy`` unchecked.
    """

    def per_example_loss(self, model: nn.Module, batch: Any) -> Tensor:
        inputs, labels = batch[0], batch[1]
        logits = model(inputs)
        if isinstance(labels, Tensor) and labels.is_floating_point() and labels.shape == logits.shape:
            return F.cross_entropy(logits, labels, reduction="none")
        n_classes = int(logits.shape[1])  # cross_entropy's class dimension
        labels = check_labels(labels, n_classes)
        if not _inside_transform():
            return F.cross_entropy(logits, labels, reduction="none")
        valid = (labels >= 0) & (labels < n_classes)
        loss = F.cross_entropy(logits, labels.clamp(0, n_classes - 1), reduction="none")
        return torch.where(valid, loss, torch.full_like(loss, float("nan")))

    def sampled_loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> Tensor:
        """Cross-entropy at labels drawn (one per example, with the CPU
        ``generator``) from the model's own predictive distribution: the loss
        whose gradients' second moment is the true Fisher (Kronecker factors
        fitted with ``fisher="true"``). The batch's labels are not read."""
        logits = model(batch[0])
        probs = torch.softmax(logits.detach().to(torch.float64), dim=1).cpu()
        labels = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)
        return F.cross_entropy(logits, labels, reduction="none")


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
        labels = check_labels(labels, int(logits.shape[1]))
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
