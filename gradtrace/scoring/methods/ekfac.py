"""``ekfac``: influence with the eigenvalue-corrected K-FAC Fisher (George et
al., 2018; as in Grosse et al., 2023 and Kronfluence), per linear layer::

    score(q, z) = sum_c w_c sum_layers vec(G_q)^T (Q diag(Lambda_c) Q^T + lambda I)^{-1} vec(G_z)

with ``Q = Q_A (x) Q_S`` the eigenvectors of K-FAC's factors and
``Lambda_c[o, i] = E_z[(Q_S^T G_z Q_A)[o, i]^2]`` the second moments of the
training gradients in that eigenbasis (fitted by ``gradtrace fit-factors``,
see :mod:`gradtrace.scoring.factors`); ``lambda = damping x mean(Lambda)``
per layer. Everything else (stores, checkpoint weights) as :mod:`.kfac`.
"""

from __future__ import annotations

from .kfac import KFACMethod


class EKFACMethod(KFACMethod):
    name = "ekfac"
    meaning = (
        "EK-FAC influence: sum over checkpoints of lr_c * grad behaviour(q)^T (F + lambda I)^-1 grad loss(z) per linear "
        "layer, F the eigenvalue-corrected Kronecker-factored Fisher (gradtrace fit-factors), lambda = damping x "
        "mean eigenvalue; same sign convention as raw. The influence-function estimate Kronfluence computes."
    )
    corrected = True
