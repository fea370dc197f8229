"""An approximate index over a gradient store, for stores too big to scan.

``build_index(store)`` (CLI: ``gradtrace index STORE``) writes a FAISS index
of one vector per training example whose inner product with a query's vector
is the raw (or cosine) score summed over checkpoints
(:mod:`gradtrace.index.vectors`); ``Attributor(store, ..., index=True)``
(CLI: ``gradtrace query --index``) takes candidates from it and re-ranks them
exactly against the store. FAISS (``faiss-cpu``) is an optional dependency:
``pip install 'gradtrace[index]'``. See docs/index.md.
"""

from .store_index import (
    KINDS, Estimate, IndexParams, StoreIndex, build_index, check_index, estimate, import_faiss, index_folder, open_index,
)
from .vectors import INDEXED_VARIANTS, query_vectors, store_vectors

__all__ = [
    "INDEXED_VARIANTS", "KINDS", "Estimate", "IndexParams", "StoreIndex", "build_index", "check_index", "estimate",
    "import_faiss", "index_folder", "open_index", "query_vectors", "store_vectors",
]
