"""Checkpoints of a training run and the learning rates that weight them.

TracIn sums over checkpoints ``c`` the term ``lr_c * <g_c(z), g_c(q)>``; a
:class:`CheckpointRef` names one checkpoint file and its learning rate.
Loading is strict: a missing file, or keys and shapes that do not match the
model, raise :class:`~gradtrace.errors.CheckpointError` naming the file and
the keys. Files load with ``torch.load(weights_only=True)`` (a checkpoint is
untrusted input) unless the caller opts out.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .errors import CheckpointError, InputError, short_list

_STATE_KEYS = ("state_dict", "model_state_dict", "model")


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint: where its weights are, its training step and the
    learning rate in force around it."""

    path: str
    lr: float
    step: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or self.lr <= 0:
            raise InputError(f"checkpoint {self.path}: lr must be a positive finite number; got {self.lr!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "lr": float(self.lr), "step": self.step}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CheckpointRef":
        return cls(path=str(d["path"]), lr=float(d["lr"]), step=d.get("step"))


def checkpoints_from_list(items: Iterable[tuple[str | Path, float] | CheckpointRef]) -> list[CheckpointRef]:
    """Checkpoints from ``[(path, lr), ...]``, in the order given."""
    refs = []
    for i, item in enumerate(items):
        if isinstance(item, CheckpointRef):
            refs.append(item)
            continue
        try:
            path, lr = item
        except (TypeError, ValueError):
            raise InputError(f"checkpoints[{i}] must be (path, lr) or a CheckpointRef; got {item!r}") from None
        refs.append(CheckpointRef(path=str(path), lr=float(lr), step=None))
    if not refs:
        raise InputError("checkpoints: need at least one checkpoint; got an empty list")
    return refs


# A number in a file name: digits, with a fraction or an exponent when it is a float ("0.5", "1e-3").
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_STEP_WORDS = ("step", "iter", "checkpoint", "ckpt", "epoch")


def step_from_name(stem: str) -> int | None:
    """The training step a checkpoint's file name (without suffix) states, or None.

    The rule: the integer right after the word ``step``, else ``iter``, else
    ``checkpoint``, else ``ckpt``, else ``epoch`` (the first of these words
    the name holds, in any case, optionally plural and followed by ``-``,
    ``_`` or ``=``); a name with none of them gives its last integer. A
    number written as a float (``loss0.5``, ``lr1e-3``) is never a step. So
    ``run3-epoch_2-loss0.5`` is step 2, ``run7_step20`` step 20 and
    ``model_0042`` step 42.
    """
    integers = [(m.start(), int(m.group())) for m in _NUMBER.finditer(stem) if m.group().isdigit()]
    lower = stem.lower()
    for word in _STEP_WORDS:
        after = [
            m.end() for m in re.finditer(rf"(?<![a-z]){word}s?[-_=]?", lower)
        ]
        found = [value for start, value in integers if start in after]
        if found:
            return found[-1]
    return integers[-1][1] if integers else None


def checkpoints_from_dir(
    directory: str | Path,
    lr: float | Mapping[int, float] | Callable[[int], float],
    pattern: str = "*.pt",
) -> list[CheckpointRef]:
    """Every state-dict file in ``directory`` matching ``pattern``, ordered by
    the step number in its name (see :func:`step_from_name` for the rule).
    Two files naming the same step are refused, naming both.

    ``lr`` is a constant, a ``{step: lr}`` mapping or a schedule ``f(step)``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"checkpoint directory {str(directory)!r} does not exist or is not a directory")
    found: dict[int, Path] = {}
    for path in sorted(directory.glob(pattern)):
        step = step_from_name(path.stem)
        if step is None:
            raise InputError(f"checkpoint file {path.name!r} has no step number in its name (pattern {pattern!r})")
        if step in found:
            raise InputError(
                f"checkpoint files {found[step].name!r} and {path.name!r} both name step {step} "
                f"(rule: gradtrace.checkpoints.step_from_name); keep one, or narrow the pattern (now {pattern!r})"
            )
        found[step] = path
    if not found:
        raise InputError(f"no checkpoint files matching {pattern!r} in {str(directory)!r}")
    refs = []
    for step, path in sorted(found.items()):
        if callable(lr):
            rate = lr(step)
        elif isinstance(lr, Mapping):
            if step not in lr:
                raise InputError(f"lr schedule has no entry for step {step} (file {path.name!r}); steps given: {sorted(lr)}")
            rate = lr[step]
        else:
            rate = lr
        refs.append(CheckpointRef(path=str(path), lr=float(rate), step=step))
    return refs


def read_state_dict(path: str | Path, weights_only: bool = True) -> dict[str, torch.Tensor]:
    """The state dict saved at ``path`` (a bare state dict, or one nested
    under ``state_dict``/``model_state_dict``/``model``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises several types for unreadable or unsafe files
        raise CheckpointError(f"checkpoint file {str(path)!r} could not be read: {exc}") from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in _STATE_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint file {str(path)!r} does not hold a state dict of tensors")
    return dict(obj)


def check_state_matches(state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], what: str, target: str,
                        hint: str = "") -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly the keys of
    ``shapes`` with those shapes; the message lists what is missing, what is
    unexpected, and what has another shape. ``what`` names the file, ``target``
    what it is loaded into; ``hint`` is added to a shape mismatch."""
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"{what} does not match {target}: missing keys {short_list(missing)}, unexpected keys {short_list(unexpected)}"
        )
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {shape}" for k, shape in shapes.items() if tuple(state[k].shape) != shape]
    if wrong:
        raise CheckpointError(f"{what} does not match the model's shapes{hint}: {short_list(wrong)}")


def load_checkpoint(model: nn.Module, ref: CheckpointRef | str | Path, weights_only: bool = True) -> nn.Module:
    """Load a checkpoint into ``model`` in place, checking every key and shape."""
    path = ref.path if isinstance(ref, CheckpointRef) else str(ref)
    state = read_state_dict(path, weights_only=weights_only)
    expected = model.state_dict()
    check_state_matches(state, {k: tuple(v.shape) for k, v in expected.items()}, f"checkpoint {path!r}", "the model")
    model.load_state_dict(state, strict=True)
    return model


# -- weights a model already holds ------------------------------------------------------------------
_SOURCE_ATTR = "_gradtrace_weights_source"


def _file_identity(path: str | Path) -> tuple[Any, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _tensor_states(model: nn.Module) -> tuple[tuple[str, int, int], ...]:
    """Each parameter's and buffer's version counter and storage: any in-place
    change (``copy_``, an optimizer step, ``load_state_dict``) bumps the
    first, moving or replacing a tensor changes the second."""
    return tuple((name, t._version, t.data_ptr()) for name, t in model.state_dict(keep_vars=True).items())


def note_weights_source(model: nn.Module, path: str | Path) -> None:
    """Record that ``model``'s weights are, right now, exactly those of the
    weights file ``path`` (it was just loaded from it), so that loading the
    same file again can be skipped while nothing changes either
    (:func:`holds_weights_of`)."""
    identity = _file_identity(path)
    if identity is not None:
        object.__setattr__(model, _SOURCE_ATTR, (identity, _tensor_states(model)))


def holds_weights_of(model: nn.Module, path: str | Path) -> bool:
    """True when ``model`` was last given its weights from the file ``path``
    (:func:`note_weights_source`), that file is unchanged (path, size,
    modification time, inode) and no parameter or buffer of the model was
    changed in place, moved or replaced since: loading ``path`` again would
    change nothing. A change made through ``tensor.data`` bypasses torch's
    version counters and is not seen: code that edits weights that way must
    load its checkpoints itself."""
    noted = getattr(model, _SOURCE_ATTR, None)
    if noted is None:
        return False
    identity, states = noted
    return identity == _file_identity(path) and states == _tensor_states(model)
