"""Class-agnostic object proposals from depth for tabletop scenes (no learning).

The classical tabletop segmentation (PCL's ``SACSegmentation`` +
``ExtractPolygonalPrismData`` + Euclidean clustering), on the depth image:

1. RANSAC fits the dominant support surface to a sample of the valid pixels.
   A 3-D plane is exactly a plane in ``(u, v, 1/z)`` (inverse depth is affine
   in the pixel coordinates under a pinhole camera), so the fit needs no
   intrinsics. ``surface='depth_affine'`` fits ``z`` affine in ``(u, v)``
   instead: a close local approximation of an oblique plane, and what some
   simulators render (the built-in sim camera's table). ``'auto'`` fits both
   and keeps whichever explains more pixels.
2. Pixels clearly in front of the surface (``min_height_m``) and inside the
   convex hull of its largest patch of pixels (so walls and the floor beyond
   the table edge are not objects) are object pixels. With intrinsics and a
   plane, the height is the true distance to the plane; otherwise the depth
   difference to the surface (never less than the height). Unknown depth
   pixels (holes) near known ones take their height above the surface.
3. Depth discontinuities split touching objects: at a jump of more than
   ``edge_ratio`` of the depth between 4-neighbours, the farther pixel is
   dropped, so an object in front keeps its outline and the one behind is cut
   off from it. 4-connected components of at least ``min_area_fraction`` of
   the image are the objects.

Each component's box is ``xyxy`` in pixels (``x2`` = last column + 1), class
``object`` (id 0). The score grows with the object's mean height above the
surface, ``1 - exp(-height / score_height_m)``: objects barely above the noise
floor score low, tall ones near 1. No NMS: components are disjoint pixel sets,
and NMS would drop an object seen partly behind another (``nms_iou`` is
accepted for the common interface and unused).

Without depth there is nothing to segment: ``detect`` returns no detections
and logs a warning once per detector. A VGA depth image is segmented at every
second pixel (``max_side_px``): about 10 ms a frame on one CPU core.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np
from scipy import ndimage

from ...core.detections import Detections
from ...core.errors import ConfigError
from ...core.frames import CameraIntrinsics
from ..registry import DETECTORS
from .base import Detector, check_positive_int, check_unit_interval

_LOG = logging.getLogger(__name__)

SURFACES = ("auto", "plane", "depth_affine")
_MODELS = {"auto": ("plane", "depth_affine"), "plane": ("plane",),
           "depth_affine": ("depth_affine",)}
#: Fewest valid depth pixels worth fitting a surface to.
_MIN_VALID_PIXELS = 64


@dataclass(frozen=True)
class SupportSurface:
    """The fitted support surface: ``w = a * u + b * v + c`` at pixel ``(u, v)``.

    ``model``: 'plane' (``w`` = 1 / depth, an exact 3-D plane) or
    'depth_affine' (``w`` = depth in metres). ``inlier_fraction``: share of the
    sampled valid pixels on the surface.
    """

    model: str
    coefficients: Tuple[float, float, float]
    inlier_fraction: float

    def depth_m(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Surface depth (metres) at pixels ``(u, v)``; NaN where it is behind the camera."""
        a, b, c = self.coefficients
        w = (a * u + b * v + c).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = 1.0 / w if self.model == "plane" else w
        return np.where(z > 0, z, np.nan).astype(np.float32)

    def scaled(self, stride: int) -> "SupportSurface":
        """The same surface in pixels of an image ``stride`` times larger."""
        a, b, c = self.coefficients
        return SupportSurface(self.model, (a / stride, b / stride, c), self.inlier_fraction)

    def camera_distance_m(self, intrinsics: CameraIntrinsics) -> float:
        """Distance from the camera centre to the plane (model 'plane' only).

        ``1/z = a u + b v + c`` with ``u = fx X/Z + cx``, ``v = fy Y/Z + cy`` is
        the plane ``n . X = 1`` with ``n = (a fx, b fy, a cx + b cy + c)``.
        """
        a, b, c = self.coefficients
        n = np.array([a * intrinsics.fx, b * intrinsics.fy,
                      a * intrinsics.cx + b * intrinsics.cy + c])
        return float(1.0 / np.linalg.norm(n))


def _fit_least_squares(uv1: np.ndarray, w: np.ndarray) -> np.ndarray:
    coefficients, *_ = np.linalg.lstsq(uv1, w, rcond=None)
    return coefficients


class TabletopDetector(Detector):
    """Objects standing on the dominant support surface, from depth alone.

    ``min_height_m``: least height above the surface of an object pixel.
    ``min_area_fraction``: least object area as a fraction of the image.
    ``surface``: 'auto', 'plane' or 'depth_affine' (see the module doc).
    ``plane_tolerance_m``: depth difference within which a pixel lies on the
    surface (sensor noise). ``edge_ratio``: relative depth jump between
    neighbours that separates two objects. ``sample_points`` /
    ``iterations``: RANSAC sample size and hypotheses per surface model;
    ``min_support_fraction``: least share of the sampled pixels on the surface
    for it to count as a table. ``score_height_m``: height at which the score
    reaches 0.63. ``max_side_px``: the depth is segmented at every n-th pixel so
    that its longer side is at most this (boxes come back in full pixels).
    ``max_fill_px``: unknown depth pixels up to this far from a known one take
    its height above the surface (holes inside objects); farther ones stay
    unknown. ``seed``: RANSAC sampling (the same frame gives the same result).
    ``last_surface`` is the surface of the latest frame in full-resolution pixels.
    """

    name = "tabletop"

    def __init__(self, *, min_height_m: float = 0.015, min_area_fraction: float = 0.002,
                 surface: str = "auto", plane_tolerance_m: float = 0.01,
                 edge_ratio: float = 0.03, sample_points: int = 2000, iterations: int = 64,
                 min_support_fraction: float = 0.2, score_height_m: float = 0.03,
                 max_side_px: int = 320, max_fill_px: int = 32, seed: int = 0,
                 weights: str = "", **common) -> None:
        super().__init__(**common)
        if weights not in ("", None):
            raise ConfigError(f"the tabletop detector has no weights (it fits the support "
                              f"plane to the depth); got weights={weights!r}, pass ''")
        if surface not in SURFACES:
            raise ConfigError(f"surface must be one of {', '.join(SURFACES)}, got {surface!r}")
        for name, value in (("min_height_m", min_height_m),
                            ("plane_tolerance_m", plane_tolerance_m),
                            ("score_height_m", score_height_m), ("edge_ratio", edge_ratio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0.0 < float(value) < 10.0:
                raise ConfigError(f"{name} must be a number in (0, 10), got {value!r}")
        self.min_height_m = float(min_height_m)
        self.plane_tolerance_m = float(plane_tolerance_m)
        self.score_height_m = float(score_height_m)
        self.edge_ratio = float(edge_ratio)
        self.min_area_fraction = check_unit_interval("min_area_fraction", min_area_fraction)
        self.min_support_fraction = check_unit_interval("min_support_fraction",
                                                        min_support_fraction, allow_zero=False)
        self.surface = surface
        self.sample_points = max(check_positive_int("sample_points", sample_points), 3)
        self.iterations = check_positive_int("iterations", iterations)
        self.max_side_px = check_positive_int("max_side_px", max_side_px)
        self.max_fill_px = check_positive_int("max_fill_px", max_fill_px)
        self.seed = int(seed)
        self._set_class_names(["object"])
        self._warned: set = set()
        #: The surface fitted on the latest frame (None: none found).
        self.last_surface: Optional[SupportSurface] = None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _LOG.warning("tabletop detector: %s", message)

    def _detect(self, rgb: np.ndarray) -> Detections:
        self._warn_once("no_depth", "no depth image with this frame, so no detections (the "
                                    "tabletop detector segments depth; subscribe to the "
                                    "aligned depth or use an RGB detector)")
        self.last_surface = None
        return Detections.empty()

    def _detect_rgbd(self, rgb: np.ndarray, depth_m: Optional[np.ndarray],
                     intrinsics: Optional[CameraIntrinsics]) -> Detections:
        if depth_m is None:
            return self._detect(rgb)
        full_h, full_w = depth_m.shape
        # Every stride-th pixel: the segmentation needs object outlines, not
        # every pixel, and a 640x480 frame costs a quarter at stride 2.
        stride = max(1, -(-max(full_h, full_w) // self.max_side_px))
        depth = depth_m[::stride, ::stride].astype(np.float32, copy=False)
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(depth) & (depth > 0)
        surface = self.fit_surface(depth, valid)
        self.last_surface = None if surface is None else surface.scaled(stride)
        if surface is None:
            return Detections.empty()
        if intrinsics is not None and stride > 1:
            intrinsics = CameraIntrinsics(intrinsics.fx / stride, intrinsics.fy / stride,
                                          intrinsics.cx / stride, intrinsics.cy / stride,
                                          depth.shape[1], depth.shape[0])
        h, w = depth.shape
        v, u = np.mgrid[0:h, 0:w].astype(np.float32)
        surface_z = surface.depth_m(u, v)
        # The depth difference to the surface is what fills holes, not the depth:
        # on a sloped table a hole filled with the nearest depth would stand above
        # or below the surface.
        with np.errstate(invalid="ignore"):
            clearance = self._fill_holes(surface_z - np.where(valid, depth, np.nan),
                                         max(1, round(self.max_fill_px / stride)))
            depth = surface_z - clearance
            height = clearance
            if intrinsics is not None and surface.model == "plane":
                # Signed distance of z * ray to the plane n . X = 1: (z_s - z) / (z_s |n|).
                height = clearance * (surface.camera_distance_m(intrinsics) / surface_z)
        labels, count = self._object_labels(height, depth)
        return self._boxes(labels, count, height, stride, (full_h, full_w))

    # ------------------------------------------------------------ surface fit

    def fit_surface(self, depth_m: np.ndarray,
                    valid: Optional[np.ndarray] = None) -> Optional[SupportSurface]:
        """RANSAC fit of the support surface to the valid pixels of ``depth_m``
        (None when too few pixels or no surface holds ``min_support_fraction``)."""
        if valid is None:
            with np.errstate(invalid="ignore"):
                valid = np.isfinite(depth_m) & (depth_m > 0)
        rows, cols = np.nonzero(valid)
        if len(rows) < _MIN_VALID_PIXELS:
            self._warn_once("few_pixels", f"only {len(rows)} valid depth pixels: no surface "
                                          "fitted, no detections")
            return None
        rng = np.random.default_rng(self.seed)
        pick = rng.choice(len(rows), size=min(self.sample_points, len(rows)), replace=False)
        u, v = cols[pick].astype(np.float64), rows[pick].astype(np.float64)
        z = depth_m[rows[pick], cols[pick]].astype(np.float64)
        # Pixel coordinates scaled to ~[-1, 1] keep the 3x3 solves well conditioned.
        scale = max(depth_m.shape) / 2.0
        uv1 = np.stack([u / scale - 1.0, v / scale - 1.0, np.ones_like(u)], axis=1)
        triples = rng.integers(0, len(z), size=(self.iterations, 3))
        best: Tuple[int, str, np.ndarray] = (-1, "", np.zeros(3))
        for model in _MODELS[self.surface]:
            w = 1.0 / z if model == "plane" else z
            coefficients = self._hypotheses(uv1, w, triples)
            inliers = self._inliers(model, coefficients, uv1, z)
            k = int(np.argmax(inliers.sum(axis=1)))
            count = int(inliers[k].sum())
            if count > best[0]:
                # Refit on the inliers of the best hypothesis: least squares, then once more.
                fit = coefficients[k:k + 1]
                for _ in range(2):
                    mask = self._inliers(model, fit, uv1, z)[0]
                    if mask.sum() < 3:
                        break
                    fit = _fit_least_squares(uv1[mask], w[mask])[None]
                best = (int(self._inliers(model, fit, uv1, z)[0].sum()), model, fit[0])
        count, model, (a, b, c) = best
        fraction = count / len(z)
        if fraction < self.min_support_fraction:
            self._warn_once("no_surface",
                            f"no support surface holds {self.min_support_fraction:.0%} of the "
                            f"depth pixels (best {fraction:.0%}): no detections on such frames")
            return None
        # Back to pixel units: w = a (u/s - 1) + b (v/s - 1) + c.
        return SupportSurface(model, (a / scale, b / scale, c - a - b), fraction)

    @staticmethod
    def _hypotheses(uv1: np.ndarray, w: np.ndarray, triples: np.ndarray) -> np.ndarray:
        """``[K, 3]`` coefficients of the surfaces through each triple of samples
        (NaN for degenerate triples), from the cross product of two edges."""
        p = np.concatenate([uv1[:, :2], w[:, None]], axis=1)[triples]  # [K, 3, 3]
        normal = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = np.abs(normal[:, 2]) > 1e-12
            a = np.where(ok, -normal[:, 0] / normal[:, 2], np.nan)
            b = np.where(ok, -normal[:, 1] / normal[:, 2], np.nan)
        c = p[:, 0, 2] - a * p[:, 0, 0] - b * p[:, 0, 1]
        return np.stack([a, b, c], axis=1)

    def _inliers(self, model: str, coefficients: np.ndarray, uv1: np.ndarray,
                 z: np.ndarray) -> np.ndarray:
        """``[K, N]``: sample n within ``plane_tolerance_m`` (in depth) of surface k."""
        w = coefficients @ uv1.T
        with np.errstate(divide="ignore", invalid="ignore"):
            surface_z = 1.0 / w if model == "plane" else w
            return (surface_z > 0) & (np.abs(surface_z - z[None]) < self.plane_tolerance_m)

    # ------------------------------------------------------------ objects

    @staticmethod
    def _fill_holes(values: np.ndarray, max_px: int) -> np.ndarray:
        """NaN pixels up to ``max_px`` from a finite one take its value (scipy's
        exact distance transform finds it); farther ones stay NaN."""
        holes = ~np.isfinite(values)
        if not holes.any() or holes.all():
            return values
        distance, (rows, cols) = ndimage.distance_transform_edt(holes, return_indices=True)
        filled = values[rows, cols]
        filled[distance > max_px] = np.nan
        return filled

    def _object_labels(self, height_m: np.ndarray,
                       depth_m: np.ndarray) -> Tuple[np.ndarray, int]:
        """4-connected components of the object pixels (0 = not an object)."""
        with np.errstate(invalid="ignore"):
            foreground = height_m >= self.min_height_m
            on_surface = np.abs(height_m) < self.plane_tolerance_m
        foreground &= self._table_region(on_surface)
        foreground &= ~self._far_side_of_jumps(depth_m)
        count, labels = cv2.connectedComponents(foreground.astype(np.uint8), connectivity=4,
                                                ltype=cv2.CV_32S)
        return labels, count - 1

    @staticmethod
    def _table_region(on_surface: np.ndarray) -> np.ndarray:
        """Inside the convex hull of the largest connected patch of surface pixels
        (PCL's polygonal prism): where the extended plane cuts a wall or an object,
        the thin line of "surface" pixels there is not the table."""
        step = 4  # the hull of a 1/16 sample is the same polygon within a few pixels
        coarse = on_surface[::step, ::step].astype(np.uint8)
        count, patches, stats, _ = cv2.connectedComponentsWithStats(coarse, connectivity=8)
        region = np.zeros(on_surface.shape, np.uint8)
        if count < 2:
            return region.astype(bool)
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        rows, cols = np.nonzero(patches == largest)
        if len(rows) >= 3:
            hull = cv2.convexHull(np.stack([cols, rows], axis=1).astype(np.int32) * step)
            cv2.fillConvexPoly(region, hull, 1)
            # Grow it by the sampling step so border rows and columns stay inside.
            region = cv2.dilate(region, np.ones((2 * step + 1, 2 * step + 1), np.uint8))
        return region.astype(bool)

    def _far_side_of_jumps(self, depth: np.ndarray) -> np.ndarray:
        """Pixels on the far side of a depth jump to a 4-neighbour."""
        far = np.zeros(depth.shape, bool)
        with np.errstate(invalid="ignore"):
            for axis in (0, 1):
                near_side, far_side = [slice(None)] * 2, [slice(None)] * 2
                near_side[axis], far_side[axis] = slice(None, -1), slice(1, None)
                first, second = depth[tuple(near_side)], depth[tuple(far_side)]
                step = second - first
                jump = np.abs(step) > self.edge_ratio * np.fmin(first, second)
                far[tuple(far_side)] |= jump & (step > 0)
                far[tuple(near_side)] |= jump & (step < 0)
        return far

    def _boxes(self, labels: np.ndarray, count: int, height_m: np.ndarray, stride: int,
               full_hw: Tuple[int, int]) -> Detections:
        """Boxes in full-resolution pixels of the components large enough, best first."""
        if count == 0:
            return Detections.empty()
        flat = labels.ravel()
        areas = np.bincount(flat, minlength=count + 1)[1:]
        heights = np.bincount(flat, weights=np.nan_to_num(height_m).ravel(),
                              minlength=count + 1)[1:] / np.maximum(areas, 1)
        min_area = max(1.0, self.min_area_fraction * labels.size)
        slices = ndimage.find_objects(labels, max_label=count)
        keep = [i for i in range(count) if areas[i] >= min_area and slices[i] is not None]
        if not keep:
            return Detections.empty()
        full_h, full_w = full_hw
        boxes = np.array([(slices[i][1].start * stride, slices[i][0].start * stride,
                           min(slices[i][1].stop * stride, full_w),
                           min(slices[i][0].stop * stride, full_h)) for i in keep], np.float32)
        scores = (1.0 - np.exp(-np.maximum(heights[keep], 0.0) / self.score_height_m))
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= self.score_threshold][:self.max_detections]
        return Detections(boxes[order], scores[order].astype(np.float32),
                          np.zeros(len(order), np.int64))


@DETECTORS.register("tabletop")
def tabletop(**kwargs) -> TabletopDetector:
    """``create_model('tabletop', kind='detector', min_height_m=0.015)``."""
    return TabletopDetector(**kwargs)
