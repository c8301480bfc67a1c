"""Depth models: importing the modules registers them in ``DEPTH_MODELS``."""
from . import depth_anything, unet  # noqa: F401
from .base import OUTPUT_KINDS, DepthModel, scale_invariant_log_loss

__all__ = ["OUTPUT_KINDS", "DepthModel", "scale_invariant_log_loss"]
