"""Compression of encoders: pruning, INT8 quantisation, distillation, fidelity.

The node calls :func:`compress` (mode ``none``/``prune``/``int8``/``distilled``)
with frames from :func:`load_calibration_frames`, then :func:`check_fidelity`.
"""
from .apply import MODES, check_fidelity, compress
from .calibration import load_calibration_frames
from .fidelity import feature_fidelity

__all__ = ["MODES", "check_fidelity", "compress", "feature_fidelity",
           "load_calibration_frames"]
