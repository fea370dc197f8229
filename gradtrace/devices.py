"""Devices and model dtypes: where the work runs and at what precision.

The one home of:

* :func:`resolve_device`: ``"auto" | "cpu" | "cuda" | "cuda:N"`` (or a
  ``torch.device``) to a ``torch.device``, with an error naming the option
  when CUDA is asked for and absent;
* :func:`resolve_model_dtype`: ``"float32" | "bfloat16" | "float16" | "float64"`` to a
  ``torch.dtype``;
* :func:`to_device`: a batch of any structure (tensors, dicts, lists,
  tuples, named tuples, Hugging Face ``BatchEncoding``, dataclasses) moved to
  a device, non-tensor leaves kept as they are;
* :func:`placed`: a model moved to a device and cast to a dtype for the
  length of a ``with`` block, and put back as it came afterwards;
* :class:`Placement`: a device and a model dtype together, as featurize and
  the attributor take them (``placement.model(m)``, ``placement.batch(b)``);
* :func:`accumulation_dtype`: the dtype features and norms are accumulated
  in (float32 for half-precision models, the model's own otherwise).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Mapping
from typing import Any, Iterator

import torch
from torch import nn

from .errors import InputError

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def resolve_device(device: str | torch.device | None, option: str = "device") -> torch.device | None:
    """The ``torch.device`` named by ``device`` (None stays None: leave the
    model where it is). ``auto`` is ``cuda`` when CUDA is available, else
    ``cpu``. Asking for CUDA without it is an :class:`InputError` naming
    ``option``."""
    if device is None:
        return None
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise InputError(f"{option} must be one of {DEVICE_CHOICES}; got {device!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index = name[5:]
        if name != "cuda" and not index.isdigit():
            raise InputError(f"{option} must be one of {DEVICE_CHOICES}; got {device!r}")
        if not torch.cuda.is_available():
            raise InputError(
                f"{option} {device!s}: CUDA is not available on this machine (torch {torch.__version__}, "
                f"built {'with' if torch.backends.cuda.is_built() else 'without'} CUDA); use {option} cpu or auto"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"{option} {device!s}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(name)
    raise InputError(f"{option} must be one of {DEVICE_CHOICES}; got {device!r}")


def resolve_model_dtype(dtype: str | torch.dtype | None, option: str = "model_dtype") -> torch.dtype | None:
    """The ``torch.dtype`` named by ``dtype`` (None stays None: leave the
    model's own)."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in MODEL_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in MODEL_DTYPES:
        return MODEL_DTYPES[dtype]
    raise InputError(f"{option} must be one of {' | '.join(MODEL_DTYPES)}; got {dtype!r}")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision tensors, the dtype itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a model runs (``device``) and in which dtype (``dtype``, for the
    forward and backward passes); None leaves each as the model has it."""

    device: torch.device | None = None
    dtype: torch.dtype | None = None

    @classmethod
    def of(cls, device: str | torch.device | None, model_dtype: str | torch.dtype | None,
           options: tuple[str, str] = ("device", "model_dtype")) -> "Placement":
        """Checked and resolved (errors name ``options``)."""
        return cls(resolve_device(device, options[0]), resolve_model_dtype(model_dtype, options[1]))

    def model(self, model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
        """:func:`placed` with these settings."""
        return placed(model, self.device, self.dtype)

    def batch(self, batch: Any) -> Any:
        """:func:`to_device` with these settings."""
        return to_device(batch, self.device, self.dtype)

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the device (dtype unchanged)."""
        return t if self.device is None else t.to(self.device)


def to_device(batch: Any, device: torch.device | str | None, dtype: torch.dtype | None = None) -> Any:
    """``batch`` with every tensor in it on ``device`` and, when ``dtype`` is
    given, every floating-point tensor in ``dtype`` (the model's, so inputs
    and weights meet in one dtype); None: unchanged.

    Walks dicts and other mappings (a Hugging Face ``BatchEncoding`` keeps its
    type and encodings), lists, tuples, named tuples and dataclass instances;
    other leaves are returned as they are. Tensors already there are not copied.
    """
    if device is None and dtype is None:
        return batch
    return _move(batch, None if device is None else torch.device(device), dtype)


def _move(obj: Any, device: torch.device | None, dtype: torch.dtype | None) -> Any:
    if isinstance(obj, torch.Tensor):
        want = dtype if dtype is not None and obj.is_floating_point() else obj.dtype
        return obj.to(device=device or obj.device, dtype=want)
    if isinstance(obj, Mapping):
        moved = {k: _move(v, device, dtype) for k, v in obj.items()}
        try:
            out = copy.copy(obj)  # keeps the type and its other state (BatchEncoding's encodings)
            for k, v in moved.items():
                out[k] = v  # type: ignore[index]
            return out
        except TypeError:  # a read-only mapping
            return moved
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(_move(v, device, dtype) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_move(v, device, dtype) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = copy.copy(obj)
        for field in dataclasses.fields(obj):
            object.__setattr__(out, field.name, _move(getattr(obj, field.name), device, dtype))
        return out
    return obj


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (cpu for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def placed(model: nn.Module, device: torch.device | None, dtype: torch.dtype | None) -> Iterator[nn.Module]:
    """``model`` on ``device`` with floating-point weights in ``dtype`` inside
    the block (None: unchanged), each parameter and buffer put back on its
    own device and dtype afterwards. Casting back does not restore values a
    lower precision rounded: wrap this in :func:`gradtrace.grads.compute.restored`
    for that."""
    if device is None and dtype is None:
        yield model
        return
    tensors = list(_tensors(model))
    before = [(t.device, t.dtype) for _, _, t in tensors]
    try:
        for owner, name, t in tensors:
            want = dtype if dtype is not None and t.is_floating_point() else t.dtype
            _set(owner, name, t, t.to(device=device or t.device, dtype=want))
        yield model
    finally:
        for (owner, name, _), (dev, dt) in zip(tensors, before):
            t = owner._parameters[name] if name in owner._parameters else owner._buffers[name]
            _set(owner, name, t, t.to(device=dev, dtype=dt))


def _tensors(model: nn.Module) -> Iterator[tuple[nn.Module, str, torch.Tensor]]:
    seen: set[int] = set()
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    yield module, name, t


def _set(owner: nn.Module, name: str, old: torch.Tensor, new: torch.Tensor) -> None:
    if new is old:
        return
    if name in owner._parameters:
        old.data = new  # in place, so that tied parameters (one tensor, two modules) stay tied
    else:
        owner._buffers[name] = new
