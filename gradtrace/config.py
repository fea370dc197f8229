"""Settings of a featurize run; every store carries them in its manifest."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from .errors import InputError
from .grads.per_example import METHODS
from .grads.projection import ProjectionConfig
from .store.settings import STORE_DTYPES, dict_differences


__all__ = ["FeaturizeConfig", "STORE_DTYPES", "dict_differences"]


@dataclasses.dataclass(frozen=True)
class FeaturizeConfig:
    """How training examples become stored gradient features.

    ``params``: ``"all"``, ``"last"`` or name patterns (see
    :func:`gradtrace.grads.selection.select_parameters`). ``batch_size`` and
    ``method`` are recorded because they fix the floating-point result: a
    resumed run must use the same ones to give the same bytes.
    ``shard_size`` is the number of examples per shard file.
    """

    params: str | tuple[str, ...] = "all"
    projection: ProjectionConfig = dataclasses.field(default_factory=ProjectionConfig)
    method: str = "auto"
    batch_size: int = 64
    shard_size: int = 4096
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.params, list):
            object.__setattr__(self, "params", tuple(self.params))
        if isinstance(self.projection, Mapping):
            object.__setattr__(self, "projection", ProjectionConfig.from_dict(self.projection))
        if not isinstance(self.projection, ProjectionConfig):
            raise InputError(f"projection must be a ProjectionConfig; got {type(self.projection).__name__}")
        if self.method not in METHODS:
            raise InputError(f"method must be one of {METHODS}; got {self.method!r}")
        for name in ("batch_size", "shard_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer; got {value!r}")
        if self.dtype not in STORE_DTYPES:
            raise InputError(f"dtype must be one of {STORE_DTYPES}; got {self.dtype!r}")
        if self.projection.kind == "factored" and self.dtype == "float16":
            raise InputError(
                "dtype='float16' cannot hold factored features (raw output gradients underflow); "
                "use 'float32' or 'float64', or a projection whose rows are stored unit-normalised"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["params"] = self.params if isinstance(self.params, str) else list(self.params)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeaturizeConfig":
        d = dict(d)
        if isinstance(d.get("params"), list):
            d["params"] = tuple(d["params"])
        if "projection" in d:
            d["projection"] = ProjectionConfig.from_dict(d["projection"])
        return cls(**d)
