"""The whole per-frame pipeline: features every processed frame, depth and tracked
detections at their own rates, and the ViT attention map on request.

``process`` returns one :class:`PerceptionResult`; which heads ran (or were
re-used or predicted) is recorded in it so the node can count and publish it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch

from ..tracking import TrackerConfig
from .config import VisionConfig
from .depth_fusion import clean_sensor_depth
from .detections import ObjectTable
from .device import resolve_target
from .frames import FeatureResult, RgbdFrame
from .head_budget import HeadScheduler
from .heads import DepthHead, DepthResult, DetectionHead
from .pipeline import EncoderPipeline


@dataclass(frozen=True)
class PerceptionResult:
    """Outputs of one processed frame.

    ``depth``: this frame's depth (None when the head is off, or skipped and
    not re-used); ``depth_reused``: it is an earlier frame's. ``objects``: the
    tracked objects (None when detection is off); ``objects_predicted``: the
    detector did not run, the tracker predicted. ``attention``: ``[h, w]`` CLS
    attention of a ViT when asked for. ``events``: what to count.
    """

    features: FeatureResult
    depth: Optional[DepthResult] = None
    depth_reused: bool = False
    objects: Optional[ObjectTable] = None
    objects_predicted: bool = False
    attention: Optional[np.ndarray] = None
    events: Dict[str, int] = field(default_factory=dict)


class PerceptionPipeline:
    """Encoder + optional depth head + optional detection head, scheduled per frame."""

    def __init__(self, encoder: EncoderPipeline, depth: Optional[DepthHead],
                 detection: Optional[DetectionHead], schedule: HeadScheduler,
                 reuse_depth: bool = True) -> None:
        self.encoder = encoder
        self.depth = depth
        self.detection = detection
        self.schedule = schedule
        self.reuse_depth = reuse_depth
        self._last_depth: Optional[DepthResult] = None

    @classmethod
    def from_config(cls, cfg: VisionConfig) -> "PerceptionPipeline":
        """Build every configured stage (models loaded, weights checked)."""
        encoder = EncoderPipeline.from_config(cfg)
        device = resolve_target(cfg.device, cfg.precision).device
        depth = None
        if cfg.depth_model != "none":
            depth = DepthHead(cfg.depth_model, cfg.depth_weights, cfg.depth_input_size, device,
                              cfg.depth_min_m, cfg.depth_max_m)
        detection = None
        if cfg.detection_model != "none":
            detection = DetectionHead(cfg.detection_model,
                                      dict(cfg.detector_options(), device=device),
                                      TrackerConfig(**cfg.tracker_options()),
                                      class_names=cfg.class_names_spec())
        schedule = HeadScheduler({"depth": cfg.depth_every_n,
                                  "detection": cfg.detection_every_n},
                                 cfg.target_fps, cfg.adaptive_heads)
        return cls(encoder, depth, detection, schedule, cfg.depth_reuse)

    def reconfigure(self, cfg: VisionConfig) -> None:
        """Apply the live parameters (rates, thresholds) without rebuilding models."""
        self.schedule.configure({"depth": cfg.depth_every_n,
                                 "detection": cfg.detection_every_n},
                                cfg.target_fps, cfg.adaptive_heads)
        self.reuse_depth = cfg.depth_reuse
        if self.detection is not None:
            self.detection.detector.score_threshold = cfg.detection_score_threshold
            self.detection.detector.nms_iou = cfg.detection_nms_iou
        if self.depth is not None:
            self.depth.min_m, self.depth.max_m = cfg.depth_min_m, cfg.depth_max_m

    def reset(self) -> None:
        """After a stamp jump backwards: forget temporal state and restart cadences."""
        self.encoder.reset()
        self.schedule.reset()
        self._last_depth = None
        if self.detection is not None:
            self.detection.reset()

    @property
    def attention_available(self) -> bool:
        return hasattr(self.encoder.encoder, "cls_attention_map") and \
            self.encoder.backend == "torch"

    def warmup(self) -> None:
        self.encoder.warmup()
        if self.depth is not None:
            self.depth.warmup()

    def process(self, frame: RgbdFrame, want_attention: bool = False) -> PerceptionResult:
        """Run the stages due on this frame. Raises InputError/ModelError for the frame."""
        events: Dict[str, int] = {}
        self.schedule.start_frame()
        try:
            features = self.encoder.process(frame)
            depth, reused = self._depth(frame, events)
            objects, predicted = self._objects(frame, None if reused else depth, events)
        finally:
            self.schedule.end_frame()
        attention = None
        if want_attention and self.attention_available:
            attention = self._attention(frame)
        return PerceptionResult(features, depth, reused, objects, predicted, attention, events)

    def _depth(self, frame: RgbdFrame, events: Dict[str, int]):
        if self.depth is None:
            return None, False
        if self.schedule.should_run("depth"):
            t0 = time.perf_counter()
            self._last_depth = self.depth.run(frame)
            self.schedule.ran("depth", time.perf_counter() - t0)
            events["depth_runs"] = 1
            return self._last_depth, False
        events["depth_skipped_budget" if self.schedule.due("depth") else "depth_skipped"] = 1
        if self.reuse_depth and self._last_depth is not None:
            events["depth_reused"] = 1
            return self._last_depth, True
        return None, False

    def _objects(self, frame: RgbdFrame, fresh_depth: Optional[DepthResult],
                 events: Dict[str, int]):
        if self.detection is None:
            return None, False
        # 3-D positions need depth of *this* frame: the fresh estimate, else the
        # frame's own sensor depth; a re-used older depth map would misplace movers.
        depth_m = None
        if fresh_depth is not None:
            depth_m = fresh_depth.depth_m
        elif frame.depth_m is not None:
            lo, hi = (self.depth.min_m, self.depth.max_m) if self.depth else (0.0, np.inf)
            depth_m = clean_sensor_depth(frame.depth_m, lo, hi)
        if self.schedule.should_run("detection"):
            t0 = time.perf_counter()
            table = self.detection.run(frame, depth_m)
            self.schedule.ran("detection", time.perf_counter() - t0)
            events["detection_runs"] = 1
            return table, False
        if self.schedule.due("detection"):
            events["detection_skipped_budget"] = 1
        events["detection_predicted"] = 1
        return self.detection.predict(frame, depth_m), True

    @torch.inference_mode()
    def _attention(self, frame: RgbdFrame) -> np.ndarray:
        x = self.encoder.preprocess(frame.rgb)
        attention = self.encoder.encoder.cls_attention_map(x)
        return attention[0].float().cpu().numpy()
