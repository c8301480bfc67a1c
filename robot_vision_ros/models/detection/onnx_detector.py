"""Detectors exported to ONNX, run with onnxruntime, in the two common layouts.

* ``yolo``: YOLOv8/YOLO11 exports. Input float ``[1, 3, H, W]`` RGB in 0..1 of
  a letterboxed frame (grey 114 padding); one output ``[1, 4+C, N]`` of
  ``cx, cy, w, h`` (input pixels) then C class scores, no objectness.
* ``tf_ssd``: TF object-detection-API graphs (SSD, SSDLite) converted with
  tf2onnx. Input uint8 NHWC ``image_tensor``; outputs ``num_detections``,
  ``detection_boxes`` (normalised ``ymin, xmin, ymax, xmax``),
  ``detection_scores``, ``detection_classes`` (1-based COCO ids), names
  possibly suffixed ``:0``.

``layout='auto'`` tells them apart by the output names and shapes.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from ...core.detections import Detections
from ...core.errors import ConfigError, ModelError, WeightsError
from ..registry import DETECTORS
from .base import Detector, SizeSpec, check_input_size
from .decode import BoxTransform, decode_yolo, letterbox, postprocess, stretch_resize
from .labels import COCO_91, default_names

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "yolo", "tf_ssd")
#: Input size when the ONNX input shape does not fix one.
DEFAULT_YOLO_SIZE = (640, 640)
DEFAULT_SSD_SIZE = (300, 300)
_TF_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
_ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidGraph,
               ort_state.InvalidProtobuf, ort_state.NoSuchFile, ort_state.NotImplemented,
               ort_state.RuntimeException, ort_state.EPFail)
_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                 "tensor(uint8)": np.uint8}


def _static_dim(dim: object) -> Optional[int]:
    """An ONNX shape entry as int, or None when symbolic/unknown."""
    return int(dim) if isinstance(dim, int) and dim > 0 else None


def _find_tf_outputs(names: Sequence[str]) -> Optional[Dict[str, str]]:
    """Map each TF-API output key to the ONNX output name carrying it, if all exist."""
    found: Dict[str, str] = {}
    for key in _TF_OUTPUTS:
        pattern = re.compile(rf"(^|/){key}(:\d+)?$")
        matches = [n for n in names if pattern.search(n)]
        if len(matches) != 1:
            return None
        found[key] = matches[0]
    return found


def _providers(device: torch.device) -> List[Union[str, Tuple[str, dict]]]:
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                    "CPUExecutionProvider"]
        log.warning("device %s requested but this onnxruntime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu); running the ONNX detector on the CPU", device)
    return ["CPUExecutionProvider"]


class OnnxDetector(Detector):
    """A YOLOv8-style or TF-API SSD detector in an ONNX file."""

    name = "onnx"

    def __init__(self, path: Union[str, Path], *, layout: str = "auto",
                 input_size: SizeSpec = None, intra_op_num_threads: int = 0,
                 **common) -> None:
        super().__init__(**common)
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if isinstance(intra_op_num_threads, bool) or not isinstance(intra_op_num_threads, int) \
                or intra_op_num_threads < 0:
            raise ConfigError(f"intra_op_num_threads must be an int >= 0 (0 = onnxruntime "
                              f"default), got {intra_op_num_threads!r}")
        requested_size = check_input_size(input_size)
        if not str(path).strip():
            raise ConfigError("path: the ONNX detector needs the path of a .onnx model file")
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"ONNX model file {self.path} does not exist (export the "
                               "detector to ONNX, or point 'path' at an existing .onnx file)")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=_providers(self.device))
        except _ORT_ERRORS as exc:
            raise WeightsError(f"onnxruntime cannot load {self.path}: {exc}") from None
        self._input = self.session.get_inputs()[0]
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._tf_outputs = _find_tf_outputs(self._output_names)
        self.layout = self._resolve_layout(layout)
        self._input_dtype = _NUMPY_DTYPES.get(self._input.type)
        if self._input_dtype is None:
            raise ConfigError(f"{self.path}: input {self._input.name} has type "
                              f"{self._input.type}; expected uint8, float or float16")
        if self.layout == "yolo":
            self._init_yolo(requested_size)
        else:
            self._init_tf_ssd(requested_size)

    # -- set-up -----------------------------------------------------------------
    def _describe_outputs(self) -> str:
        return ", ".join(f"{o.name} {o.shape}" for o in self.session.get_outputs())

    def _resolve_layout(self, layout: str) -> str:
        outputs = self.session.get_outputs()
        looks_yolo = len(outputs) == 1 and len(outputs[0].shape) == 3 \
            and len(self._input.shape) == 4
        if layout == "auto":
            if self._tf_outputs is not None:
                return "tf_ssd"
            if looks_yolo:
                return "yolo"
            raise ConfigError(f"{self.path}: cannot tell the output layout from outputs "
                              f"[{self._describe_outputs()}]; supported: YOLOv8 [1, 4+C, N] "
                              f"or TF-API {', '.join(_TF_OUTPUTS)}")
        if layout == "tf_ssd" and self._tf_outputs is None:
            raise ConfigError(f"layout='tf_ssd' but {self.path} lacks the outputs "
                              f"{', '.join(_TF_OUTPUTS)} (it has [{self._describe_outputs()}])")
        if layout == "yolo" and not looks_yolo:
            raise ConfigError(f"layout='yolo' but {self.path} does not have one [1, 4+C, N] "
                              f"output (it has [{self._describe_outputs()}])")
        return layout

    def _model_size(self, h_dim: object, w_dim: object, requested: Optional[Tuple[int, int]],
                    default: Tuple[int, int]) -> Tuple[int, int]:
        fixed = (_static_dim(h_dim), _static_dim(w_dim))
        if fixed[0] is not None and fixed[1] is not None:
            if requested is not None and requested != fixed:
                raise ConfigError(f"input_size {requested} differs from the fixed input "
                                  f"size {fixed} of {self.path}")
            return fixed  # type: ignore[return-value]
        return requested or default

    def _init_yolo(self, requested: Optional[Tuple[int, int]]) -> None:
        shape = self._input.shape
        if _static_dim(shape[1]) not in (None, 3):
            raise ConfigError(f"{self.path}: YOLO input must be [1, 3, H, W], got {shape}")
        if self._input_dtype == np.uint8:
            raise ConfigError(f"{self.path}: YOLO input must be float, got {self._input.type}")
        self.input_hw = self._model_size(shape[2], shape[3], requested, DEFAULT_YOLO_SIZE)
        rows = _static_dim(self.session.get_outputs()[0].shape[1])
        if rows is None:
            # Symbolic class count: one run on a blank frame tells it.
            blank = np.full((1, 3, *self.input_hw), 0.5, dtype=self._input_dtype)
            rows = int(self._run(blank)[0].shape[1])
        if rows < 5:
            raise ConfigError(f"{self.path}: YOLO output needs 4+C >= 5 rows, got {rows}")
        self._set_class_names(default_names(rows - 4), num_classes=rows - 4)

    def _init_tf_ssd(self, requested: Optional[Tuple[int, int]]) -> None:
        shape = self._input.shape
        if len(shape) != 4 or _static_dim(shape[3]) not in (None, 3):
            raise ConfigError(f"{self.path}: TF-API input must be [1, H, W, 3], got {shape}")
        self.input_hw = self._model_size(shape[1], shape[2], requested, DEFAULT_SSD_SIZE)
        self._tf_names = [self._tf_outputs[key] for key in _TF_OUTPUTS]  # type: ignore[index]
        self._set_class_names(COCO_91)

    # -- inference --------------------------------------------------------------
    def _run(self, blob: np.ndarray, outputs: Optional[List[str]] = None) -> List[np.ndarray]:
        try:
            return self.session.run(outputs, {self._input.name: blob})
        except _ORT_ERRORS as exc:
            raise ModelError(f"onnxruntime failed on {self.path}: {exc}") from None

    def _detect(self, rgb: np.ndarray) -> Detections:
        if self.layout == "yolo":
            return self._detect_yolo(rgb)
        return self._detect_tf_ssd(rgb)

    def _detect_yolo(self, rgb: np.ndarray) -> Detections:
        image, transform = letterbox(rgb, self.input_hw)
        blob = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=self._input_dtype)
        blob /= self._input_dtype(255.0)
        pred = torch.from_numpy(self._run(blob)[0])
        return self.decode_yolo_output(pred, transform)

    def decode_yolo_output(self, pred: torch.Tensor, transform: BoxTransform) -> Detections:
        """Decode a raw ``[1, 4+C, N]`` output of this model for the frame ``transform`` maps."""
        boxes, scores, class_ids = decode_yolo(pred, self.score_threshold)
        self._check_class_ids(class_ids)
        return postprocess(boxes, scores, class_ids, transform, self.score_threshold,
                           self.nms_iou, self.max_detections)

    def _check_class_ids(self, class_ids: torch.Tensor) -> None:
        if class_ids.numel() and int(class_ids.max()) >= len(self._class_names):
            raise ModelError(f"{self.path} predicted class {int(class_ids.max())} but only "
                             f"{len(self._class_names)} class names are known")

    def _detect_tf_ssd(self, rgb: np.ndarray) -> Detections:
        image, transform = stretch_resize(rgb, self.input_hw)
        blob = np.ascontiguousarray(image[None], dtype=self._input_dtype)
        num, boxes_yxyx, scores, classes = self._run(blob, self._tf_names)
        n = int(num.reshape(-1)[0])
        in_h, in_w = self.input_hw
        scale = torch.tensor([in_w, in_h, in_w, in_h], dtype=torch.float32)
        # normalised (ymin, xmin, ymax, xmax) -> input pixels xyxy
        boxes = torch.from_numpy(boxes_yxyx[0, :n][:, [1, 0, 3, 2]].astype(np.float32)) * scale
        class_ids = torch.from_numpy(np.rint(classes[0, :n]).astype(np.int64))
        self._check_class_ids(class_ids)
        return postprocess(boxes, torch.from_numpy(scores[0, :n].astype(np.float32)), class_ids,
                           transform, self.score_threshold, self.nms_iou, self.max_detections)


@DETECTORS.register("onnx")
def onnx_detector(**kwargs) -> OnnxDetector:
    """``create_model('onnx', kind='detector', path=..., layout='auto', ...)``."""
    if "path" not in kwargs:
        raise ConfigError("the 'onnx' detector needs path=<model.onnx>")
    return OnnxDetector(**kwargs)
