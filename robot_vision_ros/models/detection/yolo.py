"""A trainable anchor-free YOLOv8-style detection head on a torchvision backbone.

Replaces the seed's "YOLO-style" conv stack, whose output was never decoded:
here each pyramid level (strides 8, 16, 32) gets a conv stem and two branches,
box regression as ``ltrb`` distances (in strides, times the stride) from the
grid-cell centre and sigmoid class scores, decoded and NMSed exactly like an
exported YOLOv8 model (:func:`~.decode.decode_yolo`). Training uses
task-aligned assignment (TOOD / YOLOv8) with a centre prior as tie-breaker,
GIoU box loss (torchvision.ops) and BCE class loss.

The backbone is a torchvision classification network cut with
``create_feature_extractor``, randomly initialised (``weights=None``), with
GroupNorm by default so that training from scratch on small batches behaves
the same in eval mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss

from ...core.detections import Detections
from ...core.errors import ConfigError, WeightsError
from ..encoders.base import IMAGENET_MEAN, IMAGENET_STD
from ..registry import DETECTORS
from .base import Detector, SizeSpec, check_input_size, check_positive_int
from .decode import BoxTransform, decode_yolo, letterbox, postprocess
from .labels import default_names

#: Backbone name -> (torchvision builder, nodes giving strides 8, 16, 32).
BACKBONES: Dict[str, Tuple[str, Tuple[str, str, str]]] = {
    "resnet18": ("resnet18", ("layer2", "layer3", "layer4")),
    "resnet34": ("resnet34", ("layer2", "layer3", "layer4")),
    "mobilenet_v3_large": ("mobilenet_v3_large", ("features.6", "features.12", "features.16")),
}
STRIDES = (8, 16, 32)
NORMS = ("group", "batch")


def norm_factory(norm: str) -> Callable[[int], nn.Module]:
    """``group``: GroupNorm (up to 32 groups), the same in training and inference,
    so a model trained from scratch on small batches works in eval mode
    (Wu & He 2018); ``batch``: BatchNorm2d, for large-batch training."""
    if norm == "group":
        return lambda channels: nn.GroupNorm(math.gcd(channels, 32), channels)
    if norm == "batch":
        return nn.BatchNorm2d
    raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def _conv(c_in: int, c_out: int, norm: Callable[[int], nn.Module], k: int = 3) -> nn.Sequential:
    """Conv-norm-SiLU, the YOLOv8 building block."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
                         norm(c_out), nn.SiLU(inplace=True))


@dataclass
class YoloOutput:
    """Raw head output of a batch: ``boxes_xyxy [B,N,4]`` in input pixels,
    ``cls_logits [B,N,C]``, ``anchor_points [N,2]`` (x, y pixels) and
    ``strides [N]`` of the N grid cells of all levels."""

    boxes_xyxy: torch.Tensor
    cls_logits: torch.Tensor
    anchor_points: torch.Tensor
    strides: torch.Tensor

    def to_yolo_layout(self) -> torch.Tensor:
        """``[B, 4+C, N]``: cx, cy, w, h (input pixels) and sigmoid scores, as YOLOv8 exports."""
        cxcywh = box_convert(self.boxes_xyxy, in_fmt="xyxy", out_fmt="cxcywh")
        return torch.cat([cxcywh, self.cls_logits.sigmoid()], dim=2).permute(0, 2, 1)


class YoloNet(nn.Module):
    """Backbone features at strides 8/16/32 -> per-level decoupled head."""

    def __init__(self, num_classes: int, backbone: str = "resnet18",
                 head_channels: int = 64, norm: str = "group", prior_prob: float = 0.01) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        builder, nodes = BACKBONES[backbone]
        make_norm = norm_factory(norm)
        net = getattr(tvm, builder)(weights=None, norm_layer=make_norm)
        self.body = create_feature_extractor(net, {n: str(i) for i, n in enumerate(nodes)})
        with torch.no_grad():
            feats = self.body(torch.zeros(1, 3, 64, 64))
        in_channels = [f.shape[1] for f in feats.values()]
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        hc = head_channels
        self.stems = nn.ModuleList(_conv(c, hc, make_norm, 1) for c in in_channels)
        self.box_branches = nn.ModuleList(
            nn.Sequential(_conv(hc, hc, make_norm), _conv(hc, hc, make_norm), nn.Conv2d(hc, 4, 1))
            for _ in in_channels)
        self.cls_branches = nn.ModuleList(
            nn.Sequential(_conv(hc, hc, make_norm), _conv(hc, hc, make_norm),
                          nn.Conv2d(hc, num_classes, 1))
            for _ in in_channels)
        for branch in self.cls_branches:  # start every score at prior_prob (RetinaNet init)
            nn.init.constant_(branch[-1].bias, -float(np.log((1 - prior_prob) / prior_prob)))

    def forward(self, images: torch.Tensor) -> YoloOutput:
        """``images [B,3,H,W]`` RGB in 0..1, H and W multiples of 32."""
        x = (images - self.mean) / self.std
        boxes, logits, points, strides = [], [], [], []
        for level, feat in enumerate(self.body(x).values()):
            stride = STRIDES[level]
            h, w = feat.shape[-2:]
            feat = self.stems[level](feat)
            ltrb = F.softplus(self.box_branches[level](feat)) * stride
            cls = self.cls_branches[level](feat)
            ys = (torch.arange(h, device=feat.device, dtype=feat.dtype) + 0.5) * stride
            xs = (torch.arange(w, device=feat.device, dtype=feat.dtype) + 0.5) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
            ltrb = ltrb.flatten(2).permute(0, 2, 1)
            boxes.append(torch.cat([pts - ltrb[..., :2], pts + ltrb[..., 2:]], dim=2))
            logits.append(cls.flatten(2).permute(0, 2, 1))
            points.append(pts)
            strides.append(torch.full((h * w,), float(stride), device=feat.device))
        return YoloOutput(torch.cat(boxes, 1), torch.cat(logits, 1), torch.cat(points, 0),
                          torch.cat(strides, 0))


class YoloLayout(nn.Module):
    """Wraps a :class:`YoloNet` to output the YOLOv8 export layout ``[B, 4+C, N]``
    (for ``torch.onnx.export`` and the ONNX detector)."""

    def __init__(self, net: YoloNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).to_yolo_layout()


class TaskAlignedLoss:
    """YOLOv8 loss without DFL: task-aligned top-k assignment, GIoU + BCE.

    For each ground-truth box, the ``topk`` grid cells whose centre lies
    inside it and that maximise ``score^alpha * IoU^beta`` are positives (a
    small centre-distance prior breaks ties, so a fresh model whose boxes do
    not overlap the target yet still gets the central cells). A cell claimed
    by several boxes keeps the one it overlaps most. Class targets are the
    alignment normalised per box to its best IoU, so scores learn box quality.
    A box that contains no cell centre gets no positive, as in YOLOv8.
    """

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 box_weight: float = 7.5, cls_weight: float = 1.0) -> None:
        self.topk, self.alpha, self.beta = topk, alpha, beta
        self.box_weight, self.cls_weight = box_weight, cls_weight

    def __call__(self, outputs: YoloOutput, targets: Sequence[Dict[str, torch.Tensor]]
                 ) -> Dict[str, torch.Tensor]:
        if len(targets) != outputs.boxes_xyxy.shape[0]:
            raise ConfigError(f"{len(targets)} targets for a batch of "
                              f"{outputs.boxes_xyxy.shape[0]} images")
        cls_targets = torch.zeros_like(outputs.cls_logits)
        box_losses, score_sum = [], outputs.cls_logits.new_zeros(())
        for b, target in enumerate(targets):
            gt_boxes = target["boxes"].to(outputs.boxes_xyxy).reshape(-1, 4)
            gt_labels = target["labels"].to(outputs.boxes_xyxy.device).long().reshape(-1)
            if gt_boxes.shape[0] == 0:
                continue
            fg, gt_index, weight = self._assign(outputs, b, gt_boxes, gt_labels)
            cls_targets[b, fg, gt_labels[gt_index]] = weight
            giou = generalized_box_iou_loss(outputs.boxes_xyxy[b, fg], gt_boxes[gt_index],
                                            reduction="none")
            box_losses.append((giou * weight).sum())
            score_sum = score_sum + weight.sum()
        norm = score_sum.clamp(min=1.0)
        cls_loss = F.binary_cross_entropy_with_logits(outputs.cls_logits, cls_targets,
                                                      reduction="sum") / norm
        box_loss = (torch.stack(box_losses).sum() / norm if box_losses
                    else outputs.boxes_xyxy.sum() * 0.0)
        total = self.box_weight * box_loss + self.cls_weight * cls_loss
        return {"loss": total, "box": box_loss.detach(), "cls": cls_loss.detach()}

    @torch.no_grad()
    def _assign(self, outputs: YoloOutput, b: int, gt_boxes: torch.Tensor,
                gt_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positive cells, their ground-truth index and class-target weight."""
        pts = outputs.anchor_points
        x, y = pts[:, 0:1], pts[:, 1:2]  # [N,1] against [M] boxes
        inside = (x > gt_boxes[:, 0]) & (x < gt_boxes[:, 2]) & \
                 (y > gt_boxes[:, 1]) & (y < gt_boxes[:, 3])
        iou = box_iou(outputs.boxes_xyxy[b], gt_boxes)
        scores = outputs.cls_logits[b].sigmoid()[:, gt_labels]
        align = scores.pow(self.alpha) * iou.pow(self.beta) * inside
        centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
        dist = torch.cdist(pts, centres) / outputs.strides[:, None]
        metric = align + inside * 1e-9 / (1.0 + dist)
        k = min(self.topk, metric.shape[0])
        pos = torch.zeros_like(inside)
        pos.scatter_(0, metric.topk(k, dim=0).indices, True)
        pos &= inside
        # A cell inside several boxes keeps the one it overlaps most.
        best = torch.where(pos, iou, torch.full_like(iou, -1.0)).argmax(dim=1)
        fg = pos.any(dim=1)
        gt_index = best[fg]
        align_fg = align[fg, gt_index]
        pos_align = torch.where(pos, align, torch.zeros_like(align))
        max_align = pos_align.max(dim=0).values.clamp(min=1e-9)
        max_iou = torch.where(pos, iou, torch.zeros_like(iou)).max(dim=0).values
        weight = align_fg / max_align[gt_index] * max_iou[gt_index]
        return fg, gt_index, weight


class YoloHeadDetector(Detector):
    """:class:`YoloNet` behind the :class:`Detector` interface, plus training helpers."""

    name = "yolo_head"

    def __init__(self, *, num_classes: Optional[int] = None, backbone: str = "resnet18",
                 input_size: SizeSpec = 640, head_channels: int = 64, norm: str = "group",
                 weights: str = "", **common) -> None:
        super().__init__(**common)
        size = check_input_size(input_size) or (640, 640)
        if size[0] % 32 or size[1] % 32:
            raise ConfigError(f"input_size must be a multiple of 32 (the coarsest stride), "
                              f"got {input_size!r}")
        self.input_hw = size
        if num_classes is None:
            num_classes = len(self._requested_names) if self._requested_names else 80
        num_classes = check_positive_int("num_classes", num_classes)
        self._set_class_names(default_names(num_classes), num_classes=num_classes)
        self.model = YoloNet(num_classes, backbone,
                             check_positive_int("head_channels", head_channels), norm)
        self.criterion = TaskAlignedLoss()
        if weights:
            self._load(Path(weights))
        self.model.to(self.device).eval()

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise WeightsError(f"yolo_head weights file {path} does not exist (train one and "
                               "save model.state_dict(), or pass weights='' for random init)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state)
        except (OSError, RuntimeError, ValueError) as exc:
            raise WeightsError(f"cannot load yolo_head weights {path}: {exc}") from None

    def preprocess(self, rgb: np.ndarray) -> Tuple[torch.Tensor, BoxTransform]:
        """Letterboxed ``[1,3,H,W]`` float batch in 0..1 and the box transform back."""
        image, transform = letterbox(rgb, self.input_hw)
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
        return x, transform

    def training_sample(self, rgb: np.ndarray, boxes_xyxy: np.ndarray, class_ids: np.ndarray
                        ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """One training input and its target from a frame and boxes in its pixels."""
        x, transform = self.preprocess(rgb)
        boxes = transform.to_input(torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4))
        return x, {"boxes": boxes.to(self.device),
                   "labels": torch.as_tensor(class_ids, dtype=torch.int64).to(self.device)}

    def loss(self, outputs: YoloOutput, targets: Sequence[Dict[str, torch.Tensor]]
             ) -> Dict[str, torch.Tensor]:
        """``{'loss', 'box', 'cls'}``; targets: ``{'boxes' [M,4] xyxy input pixels,
        'labels' [M]}`` per image, as torchvision detection models take them."""
        return self.criterion(outputs, targets)

    def export_module(self) -> nn.Module:
        """Module mapping ``[B,3,H,W]`` 0..1 RGB to the YOLOv8 layout, for ONNX export."""
        return YoloLayout(self.model)

    def _detect(self, rgb: np.ndarray) -> Detections:
        x, transform = self.preprocess(rgb)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                pred = self.model(x).to_yolo_layout()
        finally:
            self.model.train(was_training)
        boxes, scores, class_ids = decode_yolo(pred, self.score_threshold)
        return postprocess(boxes, scores, class_ids, transform, self.score_threshold,
                           self.nms_iou, self.max_detections)


@DETECTORS.register("yolo_head")
def yolo_head(**kwargs) -> YoloHeadDetector:
    """``create_model('yolo_head', kind='detector', backbone='resnet18', num_classes=80)``."""
    return YoloHeadDetector(**kwargs)


def train_step(detector: YoloHeadDetector, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, targets: List[Dict[str, torch.Tensor]]
               ) -> Dict[str, float]:
    """One optimisation step in train mode; returns the loss terms as floats."""
    detector.model.train()
    losses = detector.loss(detector.model(images), targets)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}
