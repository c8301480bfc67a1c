"""Encoder zoo: importing this package registers every encoder in ``ENCODERS``."""
from . import (efficientnet, mobilenet, multiscale, realtime, resnet,  # noqa: F401
               rgbd_hybrid, vit)
from .base import EncoderOutput, VisionEncoder

__all__ = ["EncoderOutput", "VisionEncoder"]
