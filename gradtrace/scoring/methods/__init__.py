"""Score methods (``variant=``): a protocol, a registry and one file per method.

``Attributor.score/top_k/breakdown(variant=...)`` take a registered name or a
method object constructed with options (``FisherMethod(damping=0.05)``,
``AdamMethod(adam_states, eps=...)``). To add a method, write one file with a
:class:`ScoreMethod` (see :mod:`.base`) and add one instance to the tuple below.
"""

from .adam import AdamMethod
from .base import BlockScorer, MethodBase, QueryInputs, ScoreMethod
from .cosine import CosineMethod
from .fisher import FisherMethod, fisher_inverse, stored_gradients
from .raw import RawMethod
from .registry import available_methods, get_method, register_method, unregister_method

for _method in (RawMethod(), CosineMethod(), AdamMethod(), FisherMethod()):
    register_method(_method)

__all__ = [
    "AdamMethod", "BlockScorer", "CosineMethod", "FisherMethod", "MethodBase", "QueryInputs", "RawMethod", "ScoreMethod",
    "available_methods", "fisher_inverse", "get_method", "register_method", "stored_gradients", "unregister_method",
]
