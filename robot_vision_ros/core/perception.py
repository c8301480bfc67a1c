"""The whole per-frame pipeline: features every processed frame, depth and tracked
detections at their own rates, and the ViT attention map on request.

``process`` runs everything in the calling thread (heads within a per-frame time
budget) and returns one :class:`PerceptionResult`; which heads ran (or were
re-used or predicted) is recorded in it so the node can count and publish it.
A node that runs the heads on their own thread calls ``process_features`` on
every processed frame and ``process_heads`` on the frames its heads thread takes
(see :mod:`.head_worker`), so a slow head never holds up the features.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Protocol

import numpy as np
import torch

from ..compression.live import COLLECTING, COMPRESSING
from ..compression.quantize import FX_TRACE_LOCK
from ..tracking import TrackerConfig
from .config import VisionConfig
from .depth_fusion import clean_sensor_depth
from .detections import ObjectTable
from .device import resolve_target
from .frames import FeatureResult, RgbdFrame
from .head_budget import HeadCadence, HeadScheduler
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


@dataclass(frozen=True)
class HeadsResult:
    """What the heads produced for one frame (fields as in :class:`PerceptionResult`)."""

    depth: Optional[DepthResult] = None
    depth_reused: bool = False
    objects: Optional[ObjectTable] = None
    objects_predicted: bool = False
    events: Dict[str, int] = field(default_factory=dict)


class HeadPolicy(Protocol):
    """When heads run: :class:`HeadScheduler` (time budget) or :class:`HeadCadence`."""

    def due(self, head: str) -> bool: ...

    def should_run(self, head: str) -> bool: ...

    def ran(self, head: str, seconds: float) -> None: ...


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
        self.cadence = HeadCadence(schedule.every_n)
        self._last_depth: Optional[DepthResult] = None
        self._reset_pending = False
        #: Guard figures of the INT8 heads (``compression.heads``); empty: none.
        self.head_compression: Dict[str, Dict[str, Any]] = {}

    @classmethod
    def from_config(cls, cfg: VisionConfig) -> "PerceptionPipeline":
        """Build every configured stage (models loaded, weights checked)."""
        encoder = EncoderPipeline.from_config(cfg)
        device = resolve_target(cfg.device, cfg.precision).device
        depth = None
        if cfg.depth_model != "none":
            depth = DepthHead(cfg.depth_model, cfg.depth_weights, cfg.depth_input_size, device,
                              cfg.depth_min_m, cfg.depth_max_m, fill_holes=cfg.depth_fill_holes,
                              fill_max_px=cfg.depth_fill_max_px)
        detection = None
        if cfg.detection_model != "none":
            detection = DetectionHead(cfg.detection_model,
                                      dict(cfg.detector_options(), device=device),
                                      TrackerConfig(**cfg.tracker_options()),
                                      class_names=cfg.class_names_spec())
        head_report: Dict[str, Dict[str, Any]] = {}
        if cfg.compression_heads and cfg.compression_mode == "int8":
            from ..compression.calibration import read_frames
            from ..compression.heads import compress_heads

            head_report = compress_heads(
                depth, detection,
                read_frames(cfg.compression_calibration, cfg.compression_calibration_frames),
                cfg.compression_max_depth_absrel, cfg.compression_min_box_agreement,
                cfg.compression_calibrate_method, cfg.num_threads)
        schedule = HeadScheduler({"depth": cfg.depth_every_n,
                                  "detection": cfg.detection_every_n},
                                 cfg.target_fps, cfg.adaptive_heads)
        pipeline = cls(encoder, depth, detection, schedule, cfg.depth_reuse)
        pipeline.head_compression = head_report
        return pipeline

    def reconfigure(self, cfg: VisionConfig) -> None:
        """Apply the live parameters (rates, thresholds) without rebuilding models."""
        self.schedule.configure({"depth": cfg.depth_every_n,
                                 "detection": cfg.detection_every_n},
                                cfg.target_fps, cfg.adaptive_heads)
        self.cadence.configure({"depth": cfg.depth_every_n,
                                "detection": cfg.detection_every_n})
        self.reuse_depth = cfg.depth_reuse
        if self.detection is not None:
            self.detection.detector.score_threshold = cfg.detection_score_threshold
            self.detection.detector.nms_iou = cfg.detection_nms_iou
        if self.depth is not None:
            self.depth.min_m, self.depth.max_m = cfg.depth_min_m, cfg.depth_max_m

    def reset(self) -> None:
        """After a stamp jump backwards: forget temporal state and restart cadences
        (applied before the next frame any thread processes)."""
        self._reset_pending = True

    @property
    def attention_available(self) -> bool:
        return hasattr(self.encoder.encoder, "cls_attention_map") and \
            self.encoder.backend == "torch"

    def warmup(self) -> None:
        self.encoder.warmup()
        if self.depth is not None:
            self.depth.warmup()

    def process(self, frame: RgbdFrame, want_attention: bool = False) -> PerceptionResult:
        """Every stage due on this frame, in this thread (heads within the time budget).

        Raises InputError/ModelError for the frame.
        """
        self._apply_pending_reset()
        events: Dict[str, int] = {}
        self.schedule.start_frame()
        try:
            features = self.encoder.process(frame)
            heads = self._run_heads(frame, self.schedule, events)
        finally:
            self.schedule.end_frame()
        attention = None
        if want_attention and self.attention_available:
            attention = self._attention(frame)
        return PerceptionResult(features, heads.depth, heads.depth_reused, heads.objects,
                                heads.objects_predicted, attention, events)

    def process_features(self, frame: RgbdFrame, want_attention: bool = False
                         ) -> PerceptionResult:
        """The encoder (and attention) only, for a node that runs the heads on their own
        thread through :meth:`process_heads`."""
        self._apply_pending_reset()
        features = self.encoder.process(frame)
        attention = None
        if want_attention and self.attention_available:
            attention = self._attention(frame)
        return PerceptionResult(features, attention=attention)

    def process_heads(self, frame: RgbdFrame, index: int) -> HeadsResult:
        """Depth and tracked detections of processed frame number ``index``.

        Called from the heads thread on the newest processed frame it could take;
        heads run by :class:`HeadCadence` (``every_n`` processed frames), the
        tracker predicts when the detector is not due. Raises InputError/ModelError.
        """
        self._apply_pending_reset()
        events: Dict[str, int] = {}
        self.cadence.start_frame(index)
        try:
            with self._trace_guard():
                return self._run_heads(frame, self.cadence, events)
        finally:
            self.cadence.end_frame()

    def _trace_guard(self) -> ContextManager[Any]:
        """The FX-tracing lock while a live compression may be tracing in the background
        (tracing patches every module call in the process), else nothing."""
        live = self.encoder.live
        if live is not None and live.state in (COLLECTING, COMPRESSING):
            return FX_TRACE_LOCK
        return contextlib.nullcontext()

    @property
    def needs_depth(self) -> bool:
        """Some stage uses the depth image: the depth head, the detections' 3-D
        positions or an RGB-D encoder."""
        return (self.depth is not None or self.detection is not None
                or bool(getattr(self.encoder.encoder, "uses_depth", False)))

    @property
    def has_heads(self) -> bool:
        """Depth or detection is configured."""
        return self.depth is not None or self.detection is not None

    def _apply_pending_reset(self) -> None:
        # reset() may come from the executor thread while a worker thread is inside a
        # stage: the temporal state is cleared here, between frames, by whoever runs next.
        if self._reset_pending:
            self._reset_pending = False
            self.encoder.reset()
            self.schedule.reset()
            self.cadence.reset()
            self._last_depth = None
            if self.detection is not None:
                self.detection.reset()

    def _run_heads(self, frame: RgbdFrame, policy: "HeadPolicy",
                   events: Dict[str, int]) -> HeadsResult:
        depth, reused = self._depth(frame, policy, events)
        objects, predicted = self._objects(frame, None if reused else depth, policy, events)
        return HeadsResult(depth, reused, objects, predicted, events)

    def _depth(self, frame: RgbdFrame, policy: "HeadPolicy", events: Dict[str, int]):
        if self.depth is None:
            return None, False
        if policy.should_run("depth"):
            t0 = time.perf_counter()
            self._last_depth = self.depth.run(frame)
            policy.ran("depth", time.perf_counter() - t0)
            events["depth_runs"] = 1
            return self._last_depth, False
        events["depth_skipped_budget" if policy.due("depth") else "depth_skipped"] = 1
        if self.reuse_depth and self._last_depth is not None:
            events["depth_reused"] = 1
            return self._last_depth, True
        return None, False

    def _objects(self, frame: RgbdFrame, fresh_depth: Optional[DepthResult],
                 policy: "HeadPolicy", events: Dict[str, int]):
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
        if policy.should_run("detection"):
            t0 = time.perf_counter()
            table = self.detection.run(frame, depth_m)
            policy.ran("detection", time.perf_counter() - t0)
            events["detection_runs"] = 1
            return table, False
        if policy.due("detection"):
            events["detection_skipped_budget"] = 1
        events["detection_predicted"] = 1
        return self.detection.predict(frame, depth_m), True

    @torch.inference_mode()
    def _attention(self, frame: RgbdFrame) -> np.ndarray:
        x = self.encoder.preprocess(frame.rgb)
        attention = self.encoder.encoder.cls_attention_map(x)
        return attention[0].float().cpu().numpy()
