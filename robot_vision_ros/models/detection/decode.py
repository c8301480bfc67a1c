"""Resize/letterbox with the exact box mapping back, and detector output decoding.

Every detector of the package ends in :func:`postprocess`: score threshold,
per-class NMS (``torchvision.ops.batched_nms``), top-k, then boxes mapped from
model-input pixels to pixels of the original image through the
:class:`BoxTransform` that produced the model input, and clipped to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np
import torch
from torchvision.ops import batched_nms, box_convert

from ...core.detections import Detections
from ...core.errors import ModelError

#: Grey of the padding YOLO models were trained with.
LETTERBOX_PAD_VALUE = 114
#: Candidates kept before NMS (as Ultralytics' ``max_nms``): bounds NMS time
#: when a low threshold lets most anchors through.
MAX_NMS_CANDIDATES = 30000


@dataclass(frozen=True)
class BoxTransform:
    """Map from original-image pixels to model-input pixels, per axis:
    ``x_input = x_source * scale_x + pad_x`` (same for y)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    source_hw: Tuple[int, int]
    input_hw: Tuple[int, int]

    @classmethod
    def identity(cls, hw: Tuple[int, int]) -> "BoxTransform":
        return cls(1.0, 1.0, 0.0, 0.0, (int(hw[0]), int(hw[1])), (int(hw[0]), int(hw[1])))

    def _coeffs(self, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        scale = torch.tensor([self.scale_x, self.scale_y] * 2, dtype=like.dtype, device=like.device)
        pad = torch.tensor([self.pad_x, self.pad_y] * 2, dtype=like.dtype, device=like.device)
        return scale, pad

    def to_input(self, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """Source-image boxes ``[N,4]`` -> model-input pixels."""
        scale, pad = self._coeffs(boxes_xyxy)
        return boxes_xyxy * scale + pad

    def to_source(self, boxes_xyxy: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """Model-input boxes ``[N,4]`` -> source-image pixels (clipped to the image)."""
        scale, pad = self._coeffs(boxes_xyxy)
        out = (boxes_xyxy - pad) / scale
        if clip:
            h, w = self.source_hw
            out = torch.stack([out[:, 0].clamp(0, w), out[:, 1].clamp(0, h),
                               out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)], dim=1)
        return out


def letterbox(rgb: np.ndarray, input_hw: Tuple[int, int],
              pad_value: int = LETTERBOX_PAD_VALUE) -> Tuple[np.ndarray, BoxTransform]:
    """Resize keeping the aspect ratio and pad (centred) to ``input_hw``, as YOLO does."""
    h, w = rgb.shape[:2]
    in_h, in_w = int(input_hw[0]), int(input_hw[1])
    ratio = min(in_h / h, in_w / w)
    new_w, new_h = max(1, int(round(w * ratio))), max(1, int(round(h * ratio)))
    resized = rgb if (new_w, new_h) == (w, h) else cv2.resize(
        rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    left, top = (in_w - new_w) // 2, (in_h - new_h) // 2
    out = cv2.copyMakeBorder(resized, top, in_h - new_h - top, left, in_w - new_w - left,
                             cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    # The per-axis scale of the rounded size maps back more exactly than ``ratio``.
    return out, BoxTransform(new_w / w, new_h / h, float(left), float(top), (h, w), (in_h, in_w))


def stretch_resize(rgb: np.ndarray, input_hw: Tuple[int, int]) -> Tuple[np.ndarray, BoxTransform]:
    """Resize to ``input_hw`` without keeping the aspect ratio (SSD-style models)."""
    h, w = rgb.shape[:2]
    in_h, in_w = int(input_hw[0]), int(input_hw[1])
    out = rgb if (in_h, in_w) == (h, w) else cv2.resize(
        rgb, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
    return out, BoxTransform(in_w / w, in_h / h, 0.0, 0.0, (h, w), (in_h, in_w))


def decode_yolo(pred: torch.Tensor, score_threshold: float
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates of a YOLOv8/YOLO11 head output ``[1, 4+C, N]`` (or ``[4+C, N]``).

    Rows 0-3 are ``cx, cy, w, h`` in model-input pixels, rows 4.. are class
    scores (already sigmoid, no objectness). Each anchor votes for its best
    class (Ultralytics' default, single label). Returns ``boxes_xyxy [K,4]``
    in input pixels, ``scores [K]``, ``class_ids [K]`` with ``score >= threshold``.
    """
    if pred.dim() == 3:
        if pred.shape[0] != 1:
            raise ModelError(f"YOLO output batch must be 1, got shape {tuple(pred.shape)}")
        pred = pred[0]
    if pred.dim() != 2 or pred.shape[0] < 5:
        raise ModelError(f"YOLO output must be [1, 4+C, N] with C >= 1, got {tuple(pred.shape)}")
    pred = pred.float()
    scores, class_ids = pred[4:].max(dim=0)
    keep = scores >= score_threshold
    boxes = box_convert(pred[:4, keep].T, in_fmt="cxcywh", out_fmt="xyxy")
    return boxes, scores[keep], class_ids[keep]


def select(boxes_xyxy: torch.Tensor, scores: torch.Tensor, class_ids: torch.Tensor,
           score_threshold: float, nms_iou: float, max_detections: int) -> torch.Tensor:
    """Indices kept by threshold, per-class NMS and top-k, best score first."""
    idx = torch.nonzero(scores >= score_threshold).flatten()
    if idx.numel() > MAX_NMS_CANDIDATES:
        idx = idx[scores[idx].topk(MAX_NMS_CANDIDATES).indices]
    keep = batched_nms(boxes_xyxy[idx].float(), scores[idx].float(), class_ids[idx], nms_iou)
    return idx[keep[:max_detections]]


def postprocess(boxes_xyxy: torch.Tensor, scores: torch.Tensor, class_ids: torch.Tensor,
                transform: BoxTransform, score_threshold: float, nms_iou: float,
                max_detections: int) -> Detections:
    """Threshold, per-class NMS, top-k on input-pixel boxes; map to the source image.

    Boxes that become empty after clipping to the image (entirely in the
    letterbox padding) are dropped.
    """
    keep = select(boxes_xyxy, scores, class_ids, score_threshold, nms_iou, max_detections)
    boxes = transform.to_source(boxes_xyxy[keep].float())
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Detections(boxes[valid].cpu().numpy(), scores[keep][valid].float().cpu().numpy(),
                      class_ids[keep][valid].long().cpu().numpy())
