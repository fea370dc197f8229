"""Settings of a featurize run; every store carries them in its manifest."""

from __future__ import annotations

import dataclasses
from typing import Any

from .configbase import ConfigBase, boolean, one_of, optional, positive_int
from .errors import InputError
from .grads.per_example import METHODS
from .grads.projection import ProjectionConfig
from .store.settings import BATCH_ORDERS, STORE_DTYPES, dict_differences


__all__ = ["BATCH_ORDERS", "FeaturizeConfig", "STORE_DTYPES", "dict_differences"]


@dataclasses.dataclass(frozen=True)
class FeaturizeConfig(ConfigBase):
    """How training examples become stored gradient features.

    ``params``: ``"all"``, ``"last"`` or name patterns (see
    :func:`gradtrace.grads.selection.select_parameters`). ``batch_size`` and
    ``method`` are recorded because they fix the floating-point result: a
    resumed run must use the same ones to give the same bytes.
    ``shard_size`` is the number of examples per shard file.

    ``batch_order``: how the examples of a shard are put into batches.
    ``"file"``: ``batch_size`` at a time in the data's order. ``"length"``:
    sorted by the task's ``example_length`` (longest first, ties in data
    order), so that a batch pads little; rows are stored in the data's order
    all the same, and equal those of ``"file"`` up to float rounding (the
    padding of a batch changes the kernels' summation order; see
    docs/scale.md for the tolerance that is tested). A task without
    ``example_length`` (classifiers: every example is one size) batches in
    data order either way. ``None`` (the default) decides when featurize
    runs: an existing store keeps the order it was written in (a store
    written before this setting existed: ``"file"``), a new one gets
    ``"length"``.

    ``exact_norms``: keep each example's exact (unprojected) squared
    gradient norm beside its row (the default). Raw self-influence
    (:func:`gradtrace.scoring.self_influence`) reads them; nothing else
    does, and with the Kronecker projection they cost a Gram matrix of each
    layer's inputs and output gradients per example. ``False`` skips them:
    the manifest says so and whatever needs them refuses the store with a
    message saying why. Factored rows are scored with their exact norms and
    always keep them.

    Every store's manifest holds ``to_dict()``, and a store is reopened or
    resumed only with a config whose ``to_dict()`` equals it: its output
    must not change (tests/test_configbase.py pins it). The two fields added
    since are written only when they say something: ``batch_order`` once
    decided, ``exact_norms`` when False (a manifest without them means
    ``"file"`` and True: :data:`gradtrace.store.settings.LEGACY_CONFIG`).
    """

    params: str | tuple[str, ...] = "all"
    projection: ProjectionConfig = dataclasses.field(default_factory=ProjectionConfig)
    method: str = "auto"
    batch_size: int = 64
    shard_size: int = 4096
    dtype: str = "float32"
    batch_order: str | None = None
    exact_norms: bool = True

    _checks = {"method": one_of(METHODS), "batch_size": positive_int, "shard_size": positive_int, "dtype": one_of(STORE_DTYPES),
               "batch_order": optional(one_of(BATCH_ORDERS)), "exact_norms": boolean}

    def _check(self) -> None:
        if self.projection.kind == "factored" and self.dtype == "float16":
            raise InputError(
                "dtype='float16' cannot hold factored features (raw output gradients underflow); "
                "use 'float32' or 'float64', or a projection whose rows are stored unit-normalised"
            )
        if self.projection.kind == "factored" and not self.exact_norms:
            raise InputError(
                "exact_norms=False does not apply to projection.kind='factored': factored rows are scored with their "
                "exact norms; leave exact_norms=True"
            )

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out["batch_order"] is None:
            del out["batch_order"]
        if out["exact_norms"]:
            del out["exact_norms"]
        return out
