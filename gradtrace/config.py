"""Settings of a featurize run; every store carries them in its manifest."""

from __future__ import annotations

import dataclasses

from .configbase import ConfigBase, one_of, positive_int
from .errors import InputError
from .grads.per_example import METHODS
from .grads.projection import ProjectionConfig
from .store.settings import STORE_DTYPES, dict_differences


__all__ = ["FeaturizeConfig", "STORE_DTYPES", "dict_differences"]


@dataclasses.dataclass(frozen=True)
class FeaturizeConfig(ConfigBase):
    """How training examples become stored gradient features.

    ``params``: ``"all"``, ``"last"`` or name patterns (see
    :func:`gradtrace.grads.selection.select_parameters`). ``batch_size`` and
    ``method`` are recorded because they fix the floating-point result: a
    resumed run must use the same ones to give the same bytes.
    ``shard_size`` is the number of examples per shard file.

    Every store's manifest holds ``to_dict()``, and a store is reopened or
    resumed only with a config whose ``to_dict()`` equals it: its output
    must not change (tests/test_configbase.py pins it).
    """

    params: str | tuple[str, ...] = "all"
    projection: ProjectionConfig = dataclasses.field(default_factory=ProjectionConfig)
    method: str = "auto"
    batch_size: int = 64
    shard_size: int = 4096
    dtype: str = "float32"

    _checks = {"method": one_of(METHODS), "batch_size": positive_int, "shard_size": positive_int, "dtype": one_of(STORE_DTYPES)}

    def _check(self) -> None:
        if self.projection.kind == "factored" and self.dtype == "float16":
            raise InputError(
                "dtype='float16' cannot hold factored features (raw output gradients underflow); "
                "use 'float32' or 'float64', or a projection whose rows are stored unit-normalised"
            )
