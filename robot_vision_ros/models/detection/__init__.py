"""Object detectors: ONNX (YOLOv8 / TF-API SSD), torchvision, a trainable YOLO-style head,
and ``tabletop`` (class-agnostic objects on a support plane, from depth).

Importing this package registers them in ``DETECTORS``; build one with
``create_model(name, kind='detector', **kwargs)``.
"""
from . import onnx_detector, tabletop, torchvision_detectors, yolo  # noqa: F401  (registration)
from .base import Detector
from .decode import BoxTransform, letterbox, stretch_resize
from .labels import COCO_80, COCO_91, load_class_names

__all__ = ["Detector", "BoxTransform", "letterbox", "stretch_resize", "COCO_80", "COCO_91",
           "load_class_names"]
