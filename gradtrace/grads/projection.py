"""Random projections that shrink per-example gradients while keeping their
inner products (Johnson-Lindenstrauss).

* ``none``: the exact gradient.
* ``factored``: the exact gradient of linear layers that see one token per
  example (MLPs, classifier heads), kept as its two factors: the layer input
  ``x`` (with a 1 for the bias) and the output gradient ``dy``. The gradient
  is ``dy x^T``, so ``<dy x^T, dy' x'^T> = (dy.dy')(x.x')`` and dot products
  stay exact while a row takes ``d_in + 1 + d_out`` numbers, not
  ``(d_in + 1) d_out``.
* ``dense``: ``g -> g P`` with ``P`` a ``d x k`` matrix of +-1/sqrt(k)
  (Rademacher) or N(0, 1/k) entries. ``P`` is defined block by block (1,024
  rows per block, each from its own seed derived from the user's seed), so it
  is identical on every machine and never has to be held whole.
* ``kronecker``: for each selected ``nn.Linear``, the weight gradient
  ``sum_t dy_t x_t^T`` is projected as ``P_out^T (sum_t dy_t x_t^T) P_in``
  by projecting ``x`` and ``dy`` separately, so the ``d_out x d_in``
  per-example gradient is never built. ``P_out (x) P_in`` is itself a JL
  matrix. ``dim`` is the per-layer size: each factor has
  ``floor(sqrt(dim))`` columns, or is the identity when the layer is that
  small already (exact on that side).

Inner products are preserved in expectation: ``E[<gP, hP>] = <g, h>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import torch
from torch import Tensor

from ..configbase import ConfigBase, non_negative_int, one_of
from ..errors import InputError
from ..store.settings import PROJECTION_KINDS

KINDS = PROJECTION_KINDS
DISTRIBUTIONS = ("rademacher", "gaussian")
BLOCK_ROWS = 1024


@dataclasses.dataclass(frozen=True)
class ProjectionConfig(ConfigBase):
    """How gradients are projected (see the module docstring)."""

    kind: str = "none"
    dim: int | None = None
    seed: int = 0
    distribution: str = "rademacher"

    _prefix = "projection."
    _checks = {"kind": one_of(KINDS), "distribution": one_of(DISTRIBUTIONS), "seed": non_negative_int}

    def _check(self) -> None:
        if self.kind in ("none", "factored"):
            if self.dim is not None:
                raise InputError(f"projection.dim must be None when kind={self.kind!r}; got {self.dim!r}")
        elif not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
            raise InputError(f"projection.dim must be a positive integer for kind={self.kind!r}; got {self.dim!r}")


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the user's seed and a label, the same on every machine."""
    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def random_block(rows: int, cols: int, seed: int, distribution: str) -> Tensor:
    """A ``rows x cols`` float32 block of unscaled +-1 or N(0,1) entries."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if distribution == "rademacher":
        return torch.randint(0, 2, (rows, cols), generator=gen, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)
    return torch.randn(rows, cols, generator=gen, dtype=torch.float32)


def projection_matrix(rows: int, cols: int, seed: int, distribution: str, label: object) -> Tensor:
    """The whole ``rows x cols`` scaled projection matrix named by ``label``."""
    blocks = [
        random_block(min(BLOCK_ROWS, rows - start), cols, derive_seed(seed, label, start // BLOCK_ROWS), distribution)
        for start in range(0, rows, BLOCK_ROWS)
    ]
    return torch.cat(blocks).div_(math.sqrt(cols))


class DenseProjector:
    """``g -> g P`` for a ``d x k`` JL matrix ``P``.

    ``P`` is cached whole when it fits in ``cache_bytes``; otherwise its row
    blocks are regenerated on every call, so memory stays at one block.
    """

    def __init__(self, d: int, config: ProjectionConfig, cache_bytes: int = 512 * 2**20):
        if config.kind != "dense" or config.dim is None:
            raise InputError(f"DenseProjector needs projection.kind='dense'; got {config.kind!r}")
        if config.dim >= d:
            raise InputError(
                f"projection.dim={config.dim} is not smaller than the gradient dimension {d}: "
                "use kind='none' for exact gradients"
            )
        self.d, self.k, self.config = d, config.dim, config
        self._cached: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        self._cache_ok = d * config.dim * 4 <= cache_bytes

    def _block(self, index: int) -> Tensor:
        rows = min(BLOCK_ROWS, self.d - index * BLOCK_ROWS)
        seed = derive_seed(self.config.seed, "dense", index)
        return random_block(rows, self.k, seed, self.config.distribution).div_(math.sqrt(self.k))

    def matrix(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        n_blocks = math.ceil(self.d / BLOCK_ROWS)
        return torch.cat([self._block(i) for i in range(n_blocks)]).to(dtype=dtype, device=device)

    def project(self, grads: Tensor) -> Tensor:
        if grads.shape[-1] != self.d:
            raise InputError(f"gradient dimension {grads.shape[-1]} does not match the projection's {self.d}")
        key = (grads.dtype, grads.device)
        if self._cache_ok:
            if key not in self._cached:
                self._cached[key] = self.matrix(grads.dtype, grads.device)
            return grads @ self._cached[key]
        out = grads.new_zeros(grads.shape[0], self.k)
        for i, start in enumerate(range(0, self.d, BLOCK_ROWS)):
            block = self._block(i).to(dtype=grads.dtype, device=grads.device)
            out.addmm_(grads[:, start : start + block.shape[0]], block)
        return out


@dataclasses.dataclass
class KroneckerFactors:
    """The two projection factors of one linear layer (None: identity)."""

    p_in: Tensor | None
    p_out: Tensor | None
    k_in: int
    k_out: int


def kronecker_factors(
    module_name: str, d_in: int, d_out: int, config: ProjectionConfig, dtype: torch.dtype, device: torch.device
) -> KroneckerFactors:
    """Seeded factors for the layer ``module_name`` (``d_in`` includes the bias column)."""
    if config.kind != "kronecker" or config.dim is None:
        raise InputError(f"kronecker_factors needs projection.kind='kronecker'; got {config.kind!r}")
    side = max(1, math.isqrt(config.dim))

    def factor(d: int, which: str) -> tuple[Tensor | None, int]:
        if d <= side:
            return None, d
        m = projection_matrix(d, side, config.seed, config.distribution, ("kron", module_name, which))
        return m.to(dtype=dtype, device=device), side

    p_in, k_in = factor(d_in, "in")
    p_out, k_out = factor(d_out, "out")
    return KroneckerFactors(p_in, p_out, k_in, k_out)
