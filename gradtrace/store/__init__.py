"""The on-disk gradient store."""

from .gradient_store import GradientStore, Segment
from .writer import WriterSession, open_for_writing

__all__ = ["GradientStore", "Segment", "WriterSession", "open_for_writing"]
