"""The depth and detection heads of the pipeline, and when each runs (ROS-free).

* :class:`DepthHead`: frame -> metric depth at the RGB resolution (network,
  sensor or both fused).
* :class:`DetectionHead`: frame (+ depth) -> tracked objects with 3-D
  positions, or the tracker's prediction on frames the detector skips.
* which heads run on each frame is decided by :mod:`.head_budget`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..models.detection.labels import ClassNamesSpec, load_class_names
from ..models.registry import create_model
from ..tracking import Tracker, TrackerConfig
from .depth_fusion import clean_sensor_depth, fill_nearest, fuse_depth
from .detections import Detections, ObjectTable, Tracks
from .errors import ConfigError, InputError, ModelError
from .frames import RgbdFrame
from .geometry import check_intrinsics, object_positions
from .preprocess import Preprocessor

#: Depth "models" that are not networks.
NO_NETWORK_DEPTH = ("none", "sensor")
#: How the ``sensor`` model fills the sensor's holes (``depth.fill_holes``).
FILL_HOLES = ("none", "nearest")
DEPTH_SOURCES = ("fused", "network", "sensor", "none")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc)


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1e3


@dataclass(frozen=True)
class DepthResult:
    """Depth of one frame.

    ``depth_m``: ``[H, W]`` float32 metres at the RGB resolution, NaN unknown.
    ``source``: 'fused' (sensor + network), 'network', 'sensor' or 'none' (all
    NaN). ``fit_residual_m`` / ``inlier_fraction``: quality of the alignment of
    the prediction to the sensor, NaN when no fit was attempted (a failed fit
    still reports them; its holes are then filled unaligned or stay NaN).
    """

    depth_m: np.ndarray
    source: str
    fit_residual_m: float = math.nan
    inlier_fraction: float = math.nan
    timings_ms: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in DEPTH_SOURCES:
            raise ValueError(f"source must be one of {DEPTH_SOURCES}, got {self.source!r}")
        if self.depth_m.ndim != 2 or self.depth_m.dtype != np.float32:
            raise ValueError(f"depth_m must be [H, W] float32, got {self.depth_m.shape} "
                             f"{self.depth_m.dtype}")


class DepthHead:
    """Metric depth for each frame from a depth network and/or the sensor.

    ``model``: ``'none'`` (all-NaN depth), ``'sensor'`` (the cleaned sensor
    depth, no network) or a ``DEPTH_MODELS`` name (``unet``,
    ``depth_anything_v2``) built with ``weights`` and ``options``. A network
    sees the RGB squashed to ``input_hw``; its prediction is resized back to
    the RGB size and fused with the frame's sensor depth (a relative network
    without sensor depth gives source 'none': it has no metres). Depths outside
    ``[min_m, max_m]`` are unknown, sensor and network alike. How often the
    node runs this head is decided by :mod:`.head_budget`.

    ``fill_holes`` (``sensor`` model only; a network fills holes itself):
    ``'none'`` leaves the sensor's holes NaN, ``'nearest'`` gives each hole
    pixel the depth of the nearest valid pixel, if that is at most
    ``fill_max_px`` pixels away (0 = any distance).
    """

    def __init__(self, model: str, weights: str = "", input_hw: Tuple[int, int] = (240, 320),
                 device: torch.device = torch.device("cpu"), min_m: float = 0.1,
                 max_m: float = 10.0,
                 options: Optional[Mapping[str, Any]] = None, fill_holes: str = "none",
                 fill_max_px: int = 0) -> None:
        if not (math.isfinite(min_m) and math.isfinite(max_m) and 0.0 <= min_m < max_m):
            raise ConfigError(f"depth range needs 0 <= min_m < max_m, got {min_m} and {max_m}")
        if fill_holes not in FILL_HOLES:
            raise ConfigError(f"fill_holes must be one of {', '.join(FILL_HOLES)}, got "
                              f"{fill_holes!r}")
        if isinstance(fill_max_px, bool) or not isinstance(fill_max_px, int) or fill_max_px < 0:
            raise ConfigError(f"fill_max_px must be an integer >= 0 (0 = no limit), got "
                              f"{fill_max_px!r}")
        self.fill_holes = fill_holes
        self.fill_max_px = fill_max_px
        self.model_name = model
        self.min_m = float(min_m)
        self.max_m = float(max_m)
        self.device = torch.device(device)
        self.network: Optional[torch.nn.Module] = None
        self.preprocess: Optional[Preprocessor] = None
        if model in NO_NETWORK_DEPTH:
            return
        try:
            network = create_model(model, kind="depth", weights=weights, **dict(options or {}))
            self.network = network.eval().to(self.device)
        except RuntimeError as exc:
            if _is_oom(exc):
                raise ModelError(f"out of memory on {self.device} while loading depth model "
                                 f"'{model}'") from exc
            raise
        self.preprocess = Preprocessor(input_hw, network.mean, network.std, self.device)

    @property
    def enabled(self) -> bool:
        """False for ``model='none'``: :meth:`run` only returns NaN."""
        return self.model_name != "none"

    @property
    def output_kind(self) -> str:
        """What the network predicts ('metric', ...); 'metric' without a network."""
        return getattr(self.network, "output_kind", "metric")

    def _unknown(self, frame: RgbdFrame, t0: float) -> DepthResult:
        depth = np.full((frame.height, frame.width), np.nan, dtype=np.float32)
        return DepthResult(depth, "none", timings_ms={"depth_ms": _ms(t0, time.perf_counter())})

    def run(self, frame: RgbdFrame) -> DepthResult:
        """Depth of ``frame`` at its RGB resolution. Raises ModelError on out-of-memory."""
        t0 = time.perf_counter()
        if self.network is None:
            if self.model_name == "none" or frame.depth_m is None:
                return self._unknown(frame, t0)
            depth = clean_sensor_depth(frame.depth_m, self.min_m, self.max_m)
            if self.fill_holes == "nearest":
                depth = fill_nearest(depth, self.fill_max_px or math.inf)
            return DepthResult(depth, "sensor",
                               timings_ms={"depth_ms": _ms(t0, time.perf_counter())})
        pred, t1, t2 = self._predict(frame)
        fused = fuse_depth(pred, frame.depth_m, self.output_kind, min_depth_m=self.min_m,
                           max_depth_m=self.max_m, max_fill_m=self.max_m)
        depth = fused.depth_m
        with np.errstate(invalid="ignore"):
            depth[depth < self.min_m] = np.nan  # sensor pixels are already inside the range
        # A relative prediction without a sensor has no metres: nothing is known.
        source = "none" if fused.source == "network" and self.output_kind != "metric" \
            else fused.source
        fit = fused.fit
        t3 = time.perf_counter()
        return DepthResult(
            depth, source,
            fit_residual_m=fit.residual_m if fit is not None else math.nan,
            inlier_fraction=fit.inlier_fraction if fit is not None else math.nan,
            timings_ms={"preprocess_ms": _ms(t0, t1), "network_ms": _ms(t1, t2),
                        "fusion_ms": _ms(t2, t3), "depth_ms": _ms(t0, t3)})

    @torch.inference_mode()
    def _predict(self, frame: RgbdFrame) -> Tuple[np.ndarray, float, float]:
        """Network output resized to the RGB size, and the preprocess/network end times."""
        try:
            x = self.preprocess(frame.rgb)  # type: ignore[misc]
            t1 = time.perf_counter()
            pred = self.network(x)  # type: ignore[misc]
            if tuple(pred.shape[-2:]) != (frame.height, frame.width):
                pred = F.interpolate(pred, size=(frame.height, frame.width), mode="bilinear",
                                     align_corners=False)
            pred_np = pred[0, 0].float().cpu().numpy()
        except RuntimeError as exc:
            if _is_oom(exc):
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise ModelError(f"out of memory on {self.device} running depth model "
                                 f"'{self.model_name}'") from exc
            raise
        return pred_np, t1, time.perf_counter()

    def warmup(self, iterations: int = 2) -> None:
        """Run a few black frames so the first real frame is not slow."""
        if self.network is None or self.preprocess is None:
            return
        h, w = self.preprocess.input_hw
        blank = RgbdFrame(rgb=np.zeros((h, w, 3), np.uint8), stamp_ns=0)
        for _ in range(iterations):
            self._predict(blank)


class DetectionHead:
    """Detector + tracker + 3-D positions: one :class:`ObjectTable` per frame.

    ``model`` and ``detector_kwargs`` build the detector
    (``create_model(model, kind='detector', **detector_kwargs)``);
    ``class_names`` (the ``detection.class_names`` parameter: names, a
    built-in list or a labels file; empty = the detector's own) override the
    detector's. Track ids are unique per head. ``shrink`` is passed to
    :func:`~robot_vision_ros.core.geometry.object_positions`.
    ``last_timings_ms`` and ``last_num_detections`` describe the latest call.
    """

    def __init__(self, model: str, detector_kwargs: Optional[Mapping[str, Any]] = None,
                 tracker_config: Optional[TrackerConfig] = None,
                 class_names: ClassNamesSpec = None, shrink: float = 0.5) -> None:
        if not 0.0 < shrink <= 1.0:
            raise ConfigError(f"shrink must be in (0, 1], got {shrink}")
        kwargs = dict(detector_kwargs or {})
        if load_class_names(class_names) is not None:
            if kwargs.get("class_names") not in (None, "", [], ()):
                raise ConfigError("class_names given twice: as an argument and in "
                                  "detector_kwargs; give it once")
            kwargs["class_names"] = class_names
        self.shrink = float(shrink)
        try:
            self.detector = create_model(model, kind="detector", **kwargs)
        except RuntimeError as exc:
            if _is_oom(exc):
                raise ModelError(f"out of memory while loading detector '{model}'") from exc
            raise
        self.tracker = Tracker(tracker_config)
        self.class_names: Tuple[str, ...] = tuple(self.detector.class_names)
        self.last_timings_ms: Dict[str, float] = {}
        self.last_num_detections = 0

    def reset(self) -> None:
        """Forget all tracks (after the stamps jumped backwards); ids keep counting up."""
        self.tracker.reset()

    def run(self, frame: RgbdFrame, depth_m: Optional[np.ndarray] = None) -> ObjectTable:
        """Detect, update the tracker at the frame's stamp and locate the tracks in 3-D.

        ``depth_m``: ``[H, W]`` metres at the RGB resolution (NaN unknown) or
        None; positions are NaN without it or without ``frame.intrinsics``.
        Raises InputError (``stamp_backwards``: call :meth:`reset`;
        ``bad_size``: depth or intrinsics do not match the RGB) and ModelError.
        """
        self._check_depth(frame, depth_m)
        t0 = time.perf_counter()
        detections = self._detect(frame, depth_m)
        t1 = time.perf_counter()
        tracks = self.tracker.update(detections, frame.stamp_ns * 1e-9)
        t2 = time.perf_counter()
        table = self._table(tracks, frame, depth_m)
        t3 = time.perf_counter()
        self.last_num_detections = len(detections)
        self.last_timings_ms = {"detector_ms": _ms(t0, t1), "tracker_ms": _ms(t1, t2),
                                "positions_ms": _ms(t2, t3)}
        return table

    def predict(self, frame: RgbdFrame, depth_m: Optional[np.ndarray] = None) -> ObjectTable:
        """Tracks extrapolated to a frame the detector skips (``is_predicted`` True),
        located in 3-D with this frame's depth. Same errors as :meth:`run`."""
        self._check_depth(frame, depth_m)
        t0 = time.perf_counter()
        tracks = self.tracker.predict(frame.stamp_ns * 1e-9)
        t1 = time.perf_counter()
        table = self._table(tracks, frame, depth_m)
        self.last_num_detections = 0
        self.last_timings_ms = {"tracker_ms": _ms(t0, t1),
                                "positions_ms": _ms(t1, time.perf_counter())}
        return table

    def _detect(self, frame: RgbdFrame, depth_m: Optional[np.ndarray]) -> Detections:
        # Depth-based detectors get the sensor's own depth when there is one:
        # filled holes are guesses (a nearest fill puts steps on a sloped table).
        depth = frame.depth_m if frame.depth_m is not None else depth_m
        try:
            return self.detector.detect(frame.rgb, depth, frame.intrinsics)
        except RuntimeError as exc:
            if _is_oom(exc):
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise ModelError(f"out of memory running detector "
                                 f"'{self.detector.name}'") from exc
            raise

    @staticmethod
    def _check_depth(frame: RgbdFrame, depth_m: Optional[np.ndarray]) -> None:
        """Reject a bad depth or intrinsics before the tracker state changes."""
        if depth_m is None:
            return
        shape = getattr(depth_m, "shape", None)
        if shape != (frame.height, frame.width):
            raise InputError(f"depth_m must be [H, W] at the RGB resolution "
                             f"{frame.height}x{frame.width}, got {shape}", reason="bad_size")
        if frame.intrinsics is not None:
            check_intrinsics(frame.intrinsics, (frame.height, frame.width))

    def _table(self, tracks: Tracks, frame: RgbdFrame,
               depth_m: Optional[np.ndarray]) -> ObjectTable:
        if depth_m is not None and frame.intrinsics is not None and len(tracks):
            xyz, extent = object_positions(tracks.boxes_xyxy, depth_m, frame.intrinsics,
                                           shrink=self.shrink)
        else:
            xyz = np.full((len(tracks), 3), np.nan, np.float32)
            extent = np.full((len(tracks), 3), np.nan, np.float32)
        return ObjectTable(tracks=tracks, xyz_m=xyz, extent_m=extent,
                           class_names=self.class_names)


