"""Uniform access to the examples of a training or query set.

gradtrace accepts the shapes data usually has in PyTorch code: a tensor, a
tuple of tensors with a shared first dimension (``(X, y)``), or any sequence
of examples (a ``torch.utils.data.Dataset``, a list of dicts) together with a
collate function. :func:`as_source` wraps each in an :class:`ExampleSource`
that cuts batches by index range, so that work can be split into shards of
examples and redone exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from .configbase import positive_int
from .errors import InputError


class ExampleSource:
    """Examples addressable by position, batched by index range."""

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def batch(self, start: int, stop: int) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def example(self, index: int) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def gather(self, indices: Sequence[int]) -> Any:
        """One batch of the examples at ``indices`` (any positions, in that order)."""
        raise InputError(f"unsupported data source {type(self).__name__}: it has no gather(indices)")

    def fingerprint(self) -> str:
        """sha256 over every example's content: equal data, equal fingerprint."""
        h = hashlib.sha256()
        h.update(str(len(self)).encode())
        for i in range(len(self)):
            hash_into(h, self.example(i))
        return h.hexdigest()


class TensorSource(ExampleSource):
    """A tensor, or a tuple of tensors sharing their first dimension."""

    def __init__(self, tensors: tuple[Tensor, ...], single: bool):
        self.tensors = tensors
        self.single = single

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def batch(self, start: int, stop: int) -> Any:
        parts = tuple(t[start:stop] for t in self.tensors)
        return parts[0] if self.single else parts

    def example(self, index: int) -> Any:
        parts = tuple(t[index] for t in self.tensors)
        return parts[0] if self.single else parts

    def gather(self, indices: Sequence[int]) -> Any:
        parts = tuple(t[list(indices)] for t in self.tensors)
        return parts[0] if self.single else parts

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(str(len(self)).encode())
        for t in self.tensors:
            hash_into(h, t)
        return h.hexdigest()


class SequenceSource(ExampleSource):
    """Any indexable sequence of examples, batched with a collate function."""

    def __init__(self, examples: Sequence[Any], collate: Callable[[list[Any]], Any]):
        self.examples = examples
        self.collate = collate

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, start: int, stop: int) -> Any:
        return self.collate([self.examples[i] for i in range(start, stop)])

    def example(self, index: int) -> Any:
        return self.examples[index]

    def gather(self, indices: Sequence[int]) -> Any:
        return self.collate([self.examples[i] for i in indices])


def as_source(data: Any, collate: Callable[[list[Any]], Any] | None = None, what: str = "data") -> ExampleSource:
    """Wrap user data in an :class:`ExampleSource` (see the module docstring).

    A tuple is a set of columns sharing their first dimension (the examples),
    e.g. ``(X, y)``; its members may be tensors or numpy arrays (converted,
    dtype kept). Any other sequence (a list, a Dataset) holds one example per
    item. ``what`` names the data in errors ("data", "queries")."""
    if isinstance(data, ExampleSource):
        return data
    if isinstance(data, (Tensor, np.ndarray)) and data.ndim == 0:
        raise InputError(f"{what}: got a 0-d {type(data).__name__} (a single value); pass a batch whose first dimension counts the examples")
    if isinstance(data, Tensor):
        return TensorSource((data,), single=True)
    if isinstance(data, tuple) and data and all(isinstance(t, (Tensor, np.ndarray)) for t in data):
        return TensorSource(_columns(data, what), single=False)
    if isinstance(data, list) and collate is None:
        _check_default_collatable(data, what)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return SequenceSource(data, collate or default_collate)
    raise InputError(
        f"{what} must be a Tensor, a tuple of Tensors, or a sequence/Dataset of examples; "
        f"got {type(data).__name__}"
    )


def _columns(data: tuple[Any, ...], what: str) -> tuple[Tensor, ...]:
    """The tuple's members as tensors (numpy arrays converted), checked to be
    batches: at least 1-d, all of one length."""
    columns = []
    for i, column in enumerate(data):
        if column.ndim == 0:
            raise InputError(
                f"{what}: member {i} of the tuple is 0-d; a tuple (inputs, labels, ...) is a batch whose first "
                "dimension counts the examples: for one example pass (x[0:1], y[0:1]) rather than (x[0], y[0])"
            )
        if isinstance(column, np.ndarray):
            try:
                column = torch.as_tensor(column)
            except (TypeError, RuntimeError) as exc:
                raise InputError(f"{what}: member {i} of the tuple, a numpy array of dtype {column.dtype}, cannot be a tensor ({exc})") from None
        columns.append(column)
    lengths = [int(t.shape[0]) for t in columns]
    if len(set(lengths)) != 1:
        raise InputError(f"{what}: the tensors of a tuple must share their first dimension; got lengths {lengths}")
    return tuple(columns)


def _check_default_collatable(items: list[Any], what: str) -> None:
    """A list of arrays is a list of examples; refuse one whose examples differ
    in shape (default collation cannot batch them: usually ``[X, y]`` meant as
    the columns ``(X, y)``)."""
    if not items or not all(isinstance(t, (Tensor, np.ndarray)) for t in items):
        return
    shapes = sorted({tuple(t.shape) for t in items})
    if len(shapes) > 1:
        raise InputError(
            f"{what}: a list is read as a sequence of examples, one per item, but its {len(items)} arrays have "
            f"different shapes {shapes[:4]} and cannot be batched; for columns such as inputs and labels "
            "pass a tuple, (X, y), or give a collate function"
        )


def head(data: Any, n: int | None, name: str = "n") -> Any:
    """The first ``n`` examples of ``data`` (a tensor, a tuple of tensors
    sharing their first dimension, or a sequence of examples); all of them
    when ``n`` is None. ``n`` must be a positive integer; ``name`` names it
    in the error (``"--limit"``, say)."""
    if n is None:
        return data
    positive_int(n, name)
    if isinstance(data, tuple) and data and all(isinstance(t, Tensor) for t in data):
        return tuple(t[:n] for t in data)
    return data[:n]


def take(data: Any, indices: Sequence[int]) -> Any:
    """The examples of ``data`` at ``indices``, in the same form: rows of a
    tensor or of each tensor of a tuple, else a list of the sequence's items."""
    if isinstance(data, Tensor):
        return data[torch.as_tensor(np.asarray(indices, dtype=np.int64))]
    if isinstance(data, tuple) and data and all(isinstance(t, Tensor) for t in data):
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return tuple(t[idx] for t in data)
    return [data[int(i)] for i in indices]


def hash_into(h: "hashlib._Hash", obj: Any) -> None:
    """Feed ``obj`` (tensors, arrays, dicts, lists, tuples, scalars; else its
    ``repr``) into the hash ``h``, type and shape included; a list and a
    tuple of equal items hash alike."""
    if isinstance(obj, Tensor):
        arr = obj.detach().cpu().contiguous()
        h.update(f"T{arr.dtype}{tuple(arr.shape)}".encode())
        h.update(arr.view(-1).view(torch.uint8).numpy().tobytes() if arr.numel() else b"")
    elif isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        h.update(f"A{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=str):
            h.update(json.dumps(str(key)).encode())
            hash_into(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            hash_into(h, item)
        h.update(b"]")
    elif isinstance(obj, (str, int, float, bool)) or obj is None:
        h.update(json.dumps(obj).encode())
    elif isinstance(obj, bytes):
        h.update(obj)
    else:
        h.update(repr(obj).encode())


def read_jsonl_objects(path: str | Path, label: str | None = None) -> list[dict[str, Any]]:
    """Every non-blank line of a JSONL file, each a JSON object. Errors name
    ``label`` (default: the path) and the line number."""
    return [rec for _, rec in numbered_jsonl_objects(path, label)]


def numbered_jsonl_objects(path: str | Path, label: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """:func:`read_jsonl_objects` with each object's 1-based line number.

    Lines end at ``\\n`` only (a JSON string may hold U+2028); a UTF-8 byte
    order mark is allowed on the first line; a line that is not UTF-8 is an
    error naming the line, the column and the byte."""
    path = Path(path)
    label = label or str(path)
    if not path.is_file():
        raise InputError(f"{label}: file {str(path)!r} does not exist")
    out = []
    for n, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{label}: line {n} is not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{label}: line {n} is not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise InputError(f"{label}: line {n} must be a JSON object; got {type(rec).__name__}")
        out.append((n, rec))
    return out
