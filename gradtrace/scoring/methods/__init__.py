"""Score methods (``variant=``): a protocol, a registry and one file per method.

``Attributor.score/top_k/breakdown(variant=...)`` take a registered name or a
method object constructed with options (``FisherMethod(damping=0.05)``,
``AdamMethod(adam_states, eps=...)``, ``EKFACMethod(checkpoints="last")``,
``TrackStarMethod(adam_states, whitening="trackstar")``). docs/methods.md
describes every method. To add a method, write one file with a
:class:`ScoreMethod` (see :mod:`.base`) and add one instance to the tuple below.
"""

from .adam import AdamMethod
from .base import BlockScorer, MethodBase, QueryInputs, ScoreMethod
from .cosine import CosineMethod
from .ekfac import EKFACMethod
from .fisher import FisherMethod, fisher_inverse, stored_gradients
from .kfac import KFACMethod
from .raw import RawMethod
from .registry import available_methods, get_method, register_method, unregister_method
from .trackstar import TrackStarMethod, TrackStarTransform, fit_whitening

for _method in (RawMethod(), CosineMethod(), AdamMethod(), FisherMethod(), KFACMethod(), EKFACMethod(), TrackStarMethod()):
    register_method(_method)

__all__ = [
    "AdamMethod", "BlockScorer", "CosineMethod", "EKFACMethod", "FisherMethod", "KFACMethod", "MethodBase", "QueryInputs",
    "RawMethod", "ScoreMethod", "TrackStarMethod", "TrackStarTransform", "available_methods", "fisher_inverse",
    "fit_whitening", "get_method", "register_method", "stored_gradients", "unregister_method",
]
