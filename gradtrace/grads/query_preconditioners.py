"""Old home of the query-side preconditioners; they live in their methods' modules now.

* :func:`adam_diagonal`: :mod:`gradtrace.grads.adam` (with the training-side
  Adam preconditioner, sharing its reading of the optimizer state).
* :func:`fisher_inverse`: :mod:`gradtrace.scoring.methods.fisher`.
"""

from ..scoring.methods.fisher import fisher_inverse
from .adam import adam_diagonal

__all__ = ["adam_diagonal", "fisher_inverse"]
