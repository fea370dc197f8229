"""The on-disk gradient store."""

from .gradient_store import GradientStore, Segment

__all__ = ["GradientStore", "Segment"]
