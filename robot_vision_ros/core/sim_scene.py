"""A procedural RGB-D scene for the built-in simulated camera (numpy only).

Boxes of several colours slide and bounce above a textured table seen by a
pinhole camera. Depth is exact (metres, per pixel), and the ground truth
(per-object boxes, ids and distances) comes with every frame, so tests and
the demo can score what the node publishes. Deterministic for a seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from .errors import ConfigError
from .frames import CameraIntrinsics
from .ground_truth import GroundTruth, ground_truth_from_labels

_PALETTE = np.array([[220, 40, 40], [40, 170, 60], [40, 80, 220], [230, 200, 30],
                     [200, 60, 200], [30, 200, 210], [240, 130, 30], [120, 120, 120]],
                    dtype=np.uint8)
#: Ground-truth class of a box: its palette colour (``class_id`` indexes this).
CLASS_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "grey")


@dataclass(frozen=True)
class SimObject:
    """Ground truth of one object in one frame."""

    object_id: int
    box_xyxy: Tuple[int, int, int, int]
    depth_m: float


@dataclass(frozen=True)
class SimFrame:
    """One rendered frame: ``rgb [H,W,3]`` uint8, ``depth_m [H,W]`` float32, truth.

    ``objects`` hold each object's whole box (occluded parts included) and its
    distance; ``labels [H,W]`` int32 is the object id seen at each pixel (0 = table).
    """

    index: int
    time_s: float
    rgb: np.ndarray
    depth_m: np.ndarray
    objects: List[SimObject]
    labels: np.ndarray


class SimScene:
    """Renders frame ``i`` of a seeded scene (any order, so replay is exact)."""

    def __init__(self, width: int = 640, height: int = 480, num_objects: int = 5,
                 seed: int = 0, fps: float = 30.0) -> None:
        if width < 32 or height < 32:
            raise ConfigError(f"sim camera size must be at least 32x32, got {width}x{height}")
        if not 0 <= num_objects <= len(_PALETTE) * 4:
            raise ConfigError(f"num_objects must be 0..{len(_PALETTE) * 4}, got {num_objects}")
        if not fps > 0:
            raise ConfigError(f"fps must be > 0, got {fps}")
        self.width, self.height, self.fps = width, height, fps
        f = 0.9 * width
        self.intrinsics = CameraIntrinsics(f, f, (width - 1) / 2, (height - 1) / 2,
                                           width, height)
        rng = np.random.default_rng(seed)
        self._table_rgb, self._table_depth = self._table(rng)
        n = num_objects
        self._size = rng.uniform(0.12, 0.25, size=(n, 2)) * min(width, height)
        self._pos0 = rng.uniform(0.15, 0.85, size=(n, 2)) * (width, height)
        self._vel = rng.uniform(-0.35, 0.35, size=(n, 2)) * (width, height)  # px/s
        self._depth = rng.uniform(0.6, 2.0, size=n)
        self.class_ids = np.arange(n) % len(_PALETTE)  # object id i + 1 has class_ids[i]
        self._colour = _PALETTE[self.class_ids]

    def _table(self, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        h, w = self.height, self.width
        # A plane tilted away from the camera: far at the top of the image.
        rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        depth = np.broadcast_to(3.0 - 1.8 * rows, (h, w)).astype(np.float32)
        noise = rng.integers(0, 40, size=(h // 8 + 1, w // 8 + 1, 1), dtype=np.int16)
        noise = np.repeat(np.repeat(noise, 8, 0), 8, 1)[:h, :w]
        base = np.array([150, 120, 90], np.int16)
        rgb = np.clip(base + noise - 20 + (rows[..., None] * 40).astype(np.int16), 0, 255)
        return rgb.astype(np.uint8), depth

    def _positions(self, t: float) -> np.ndarray:
        # Bounce inside the image: reflect the unbounded path into [lo, hi].
        lo = self._size / 2
        hi = np.array([self.width, self.height]) - self._size / 2
        span = np.maximum(hi - lo, 1.0)
        p = self._pos0 + self._vel * t - lo
        p = np.mod(p, 2 * span)
        p = np.where(p > span, 2 * span - p, p)
        return lo + p

    def render(self, index: int) -> SimFrame:
        """Frame ``index`` (time ``index / fps``), with ground truth."""
        t = index / self.fps
        rgb = self._table_rgb.copy()
        depth = self._table_depth.copy()
        labels = np.zeros(depth.shape, np.int32)
        centres = self._positions(t)
        objects: List[SimObject] = []
        for i in np.argsort(-self._depth):  # far to near: the nearest is drawn last
            cx, cy = centres[i]
            half_w, half_h = self._size[i] / 2
            x1, y1 = int(max(cx - half_w, 0)), int(max(cy - half_h, 0))
            x2, y2 = int(min(cx + half_w, self.width)), int(min(cy + half_h, self.height))
            if x2 <= x1 or y2 <= y1:
                continue
            region = depth[y1:y2, x1:x2]
            in_front = self._depth[i] < region
            region[in_front] = self._depth[i]
            shade = rgb[y1:y2, x1:x2]
            stripes = ((np.arange(x2 - x1) // 6) % 2 * 30).astype(np.int16)
            colour = np.clip(self._colour[i].astype(np.int16) - stripes[:, None], 0, 255)
            shade[in_front] = np.broadcast_to(colour, shade.shape)[in_front].astype(np.uint8)
            labels[y1:y2, x1:x2][in_front] = int(i) + 1
            objects.append(SimObject(int(i) + 1, (x1, y1, x2, y2), float(self._depth[i])))
        objects.sort(key=lambda o: o.object_id)
        return SimFrame(index, t, rgb, depth, objects, labels)

    def ground_truth(self, frame: SimFrame) -> GroundTruth:
        """Ground truth of ``frame``: boxes of the visible pixels of each object,
        ``class_id`` = its colour (:data:`CLASS_NAMES`); depth exact."""
        class_of = {i + 1: int(c) for i, c in enumerate(self.class_ids)}
        return ground_truth_from_labels(frame.index, frame.labels, frame.depth_m, class_of)
