"""Old home of :class:`AdamPreconditioner`; it lives in :mod:`gradtrace.grads.adam`."""

from .adam import AdamPreconditioner

__all__ = ["AdamPreconditioner"]
