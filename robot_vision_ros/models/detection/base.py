"""The interface every detector shares, and validation of its common arguments.

A detector takes one ``[H, W, 3]`` uint8 RGB frame (plus, optionally, the
aligned depth in metres and the camera intrinsics) and returns
:class:`~robot_vision_ros.core.detections.Detections` in pixels of that frame;
``class_ids`` index into ``class_names``. Preprocessing (resize, letterbox,
normalisation) and decoding happen inside, so callers never see model-input
coordinates. RGB detectors ignore the depth; depth-based ones (``tabletop``)
override :meth:`Detector._detect_rgbd`.
"""
from __future__ import annotations

import abc
import numbers
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from ...core.detections import Detections
from ...core.errors import ConfigError, InputError
from ...core.frames import CameraIntrinsics
from ...core.geometry import check_intrinsics
from .labels import ClassNamesSpec, load_class_names

DeviceSpec = Union[None, str, torch.device]
SizeSpec = Union[None, int, Tuple[int, int]]


def check_rgb(rgb: object) -> np.ndarray:
    """The frame as ``[H, W, 3]`` uint8, else InputError (``bad_size``/``bad_dtype``)."""
    if not isinstance(rgb, np.ndarray):
        raise InputError(f"detector input must be a numpy array, got {type(rgb).__name__}",
                         reason="bad_type")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InputError(f"detector input must be an [H, W, 3] RGB image, got shape "
                         f"{rgb.shape}", reason="bad_size")
    if rgb.dtype != np.uint8:
        raise InputError(f"detector input must be uint8 RGB, got {rgb.dtype}", reason="bad_dtype")
    return rgb


def check_depth(depth_m: object, hw: Tuple[int, int]) -> np.ndarray:
    """Depth as an ``[H, W]`` float array at the RGB size ``hw``, else InputError.

    Values are not checked: NaN, inf and <= 0 mean "unknown" to every detector.
    """
    if not isinstance(depth_m, np.ndarray):
        raise InputError(f"depth_m must be a numpy array, got {type(depth_m).__name__}",
                         reason="bad_type")
    if depth_m.shape != tuple(hw):
        raise InputError(f"depth_m must be [H, W] at the RGB resolution {hw[0]}x{hw[1]}, got "
                         f"shape {depth_m.shape}", reason="bad_size")
    if depth_m.dtype.kind != "f":
        raise InputError(f"depth_m must be float metres, got {depth_m.dtype} (convert 16UC1 "
                         "millimetres with / 1000 first)", reason="bad_dtype")
    return depth_m


def check_unit_interval(name: str, value: object, allow_zero: bool = True) -> float:
    """A float in [0, 1] (or (0, 1]); ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    v = float(value)
    if not (0.0 <= v <= 1.0) or (not allow_zero and v == 0.0):
        bounds = "[0, 1]" if allow_zero else "(0, 1]"
        raise ConfigError(f"{name} must be in {bounds}, got {value!r}")
    return v


def check_positive_int(name: str, value: object) -> int:
    """An int >= 1; ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_input_size(value: SizeSpec, name: str = "input_size") -> Optional[Tuple[int, int]]:
    """``None``, an int (square) or ``(height, width)`` -> ``(h, w)`` or None."""
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        size = check_positive_int(name, value)
        return size, size
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return check_positive_int(name, value[0]), check_positive_int(name, value[1])
    raise ConfigError(f"{name} must be an int or (height, width), got {value!r}")


def check_device(value: DeviceSpec) -> torch.device:
    """``None`` (CPU), a ``torch.device`` or a device string."""
    if value is None:
        return torch.device("cpu")
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError as exc:
            raise ConfigError(f"device {value!r} is not a valid torch device: {exc}") from None
    raise ConfigError(f"device must be a torch.device or a string, got {value!r}")


class Detector(abc.ABC):
    """Base of every detector: common arguments, input checks, ``detect``.

    Subclasses implement :meth:`_detect` on a checked frame and set the
    default class names with :meth:`_set_class_names`.
    """

    #: Registry name, set by the subclass.
    name: str = ""

    def __init__(self, *, score_threshold: float = 0.3, nms_iou: float = 0.5,
                 max_detections: int = 100, class_names: ClassNamesSpec = None,
                 device: DeviceSpec = None) -> None:
        self.score_threshold = check_unit_interval("score_threshold", score_threshold)
        self.nms_iou = check_unit_interval("nms_iou", nms_iou, allow_zero=False)
        self.max_detections = check_positive_int("max_detections", max_detections)
        self.device = check_device(device)
        self._requested_names = load_class_names(class_names)
        self._class_names: List[str] = list(self._requested_names or [])

    @property
    def class_names(self) -> List[str]:
        """Name of each class id (``class_names[class_id]``)."""
        return list(self._class_names)

    def _set_class_names(self, default: List[str], num_classes: Optional[int] = None) -> None:
        """Use the requested names, else ``default``; check they cover ``num_classes``."""
        names = self._requested_names if self._requested_names is not None else default
        if num_classes is not None and len(names) < num_classes:
            raise ConfigError(f"class_names has {len(names)} names but the model "
                              f"{self.name or type(self).__name__} predicts {num_classes} classes")
        self._class_names = list(names)

    def detect(self, rgb: np.ndarray, depth_m: Optional[np.ndarray] = None,
               intrinsics: Optional[CameraIntrinsics] = None) -> Detections:
        """Detections of one ``[H, W, 3]`` uint8 RGB frame, boxes in its pixels.

        ``depth_m``: the aligned ``[H, W]`` depth in metres (NaN unknown) or None;
        ``intrinsics``: the camera's, for that size, or None. Detectors that do
        not use depth ignore both (after checking them). InputError on a bad frame,
        depth or intrinsics.
        """
        rgb = check_rgb(rgb)
        if depth_m is not None:
            depth_m = check_depth(depth_m, rgb.shape[:2])
        if intrinsics is not None:
            check_intrinsics(intrinsics, rgb.shape[:2])
        return self._detect_rgbd(rgb, depth_m, intrinsics)

    def _detect_rgbd(self, rgb: np.ndarray, depth_m: Optional[np.ndarray],
                     intrinsics: Optional[CameraIntrinsics]) -> Detections:
        """Detect on checked inputs; RGB detectors see the colour image only."""
        return self._detect(rgb)

    @abc.abstractmethod
    def _detect(self, rgb: np.ndarray) -> Detections:
        """Detect on a frame already checked by :func:`check_rgb`."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, score_threshold="
                f"{self.score_threshold}, nms_iou={self.nms_iou}, max_detections="
                f"{self.max_detections}, classes={len(self._class_names)}, device={self.device})")
