"""Pixels + depth -> 3-D points in the camera optical frame (numpy, ROS-free).

Conventions: the camera optical frame has x right, y down, z forward (REP-103
``*_optical_frame``). Intrinsics use the ROS/OpenCV convention where pixel
``(row i, column j)`` has its centre at ``(u, v) = (j, i)``. Boxes (``xyxy``)
use the detectors' continuous convention where pixel ``(0, 0)`` covers
``[0, 1) x [0, 1)``, so a box edge coordinate ``x`` is the centre coordinate
``x - 0.5``.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .errors import ConfigError, InputError
from .frames import CameraIntrinsics

#: Smallest depth extent reported for an object: the spread of a flat surface's
#: depths is zero, but no real object is that thin.
MIN_DEPTH_EXTENT_M = 0.05


def check_intrinsics(intrinsics: CameraIntrinsics, hw: Tuple[int, int]) -> None:
    """Raise InputError (``bad_size``) unless ``intrinsics`` describe an image of size ``hw``."""
    if not isinstance(intrinsics, CameraIntrinsics):
        raise InputError(f"intrinsics must be CameraIntrinsics, got {type(intrinsics).__name__}",
                         reason="bad_intrinsics")
    if (intrinsics.height, intrinsics.width) != tuple(hw):
        raise InputError(f"intrinsics are for {intrinsics.width}x{intrinsics.height} but the "
                         f"depth image is {hw[1]}x{hw[0]}; scale them with "
                         f"CameraIntrinsics.scaled({hw[1]}, {hw[0]})", reason="bad_size")
    if not (intrinsics.fx > 0 and intrinsics.fy > 0):
        raise InputError(f"intrinsics need fx, fy > 0, got {intrinsics.fx}, {intrinsics.fy}",
                         reason="bad_intrinsics")


def _check_depth(depth_m: object) -> np.ndarray:
    if not isinstance(depth_m, np.ndarray) or depth_m.ndim != 2 or depth_m.size == 0:
        raise InputError(f"depth_m must be a non-empty [H, W] array, got "
                         f"{getattr(depth_m, 'shape', type(depth_m).__name__)}", reason="bad_size")
    if depth_m.dtype.kind != "f":
        raise InputError(f"depth_m must be float metres, got {depth_m.dtype}",
                         reason="bad_dtype")
    return depth_m


def backproject(depth_m: np.ndarray, intrinsics: CameraIntrinsics) -> np.ndarray:
    """``[H, W, 3]`` float32 points (metres, optical frame) of every pixel; NaN where
    the depth is unknown (NaN, inf or <= 0)."""
    depth = _check_depth(depth_m)
    check_intrinsics(intrinsics, depth.shape)
    z = depth.astype(np.float32, copy=True)
    with np.errstate(invalid="ignore"):
        z[~np.isfinite(z) | (z <= 0)] = np.nan
    h, w = z.shape
    x_ray = (np.arange(w, dtype=np.float32) - intrinsics.cx) / intrinsics.fx
    y_ray = (np.arange(h, dtype=np.float32) - intrinsics.cy) / intrinsics.fy
    return np.stack((z * x_ray[None, :], z * y_ray[:, None], z), axis=-1)


def _shrunk_range(lo: float, hi: float, shrink: float, size: int) -> Tuple[int, int]:
    """Index range ``[a, b)`` of the pixels whose centres lie in ``[lo, hi]`` clipped to
    the image and then shrunk; at least the pixel under the centre. Empty outside."""
    lo, hi = max(lo, 0.0), min(hi, float(size))
    if hi < lo:
        return 0, 0
    centre, half = 0.5 * (lo + hi), 0.5 * shrink * (hi - lo)
    a = int(np.ceil(centre - half - 0.5))
    b = int(np.floor(centre + half - 0.5)) + 1
    if b <= a:
        a = int(np.floor(centre))
        b = a + 1
    return max(a, 0), min(b, size)


def object_positions(boxes_xyxy: np.ndarray, depth_m: np.ndarray,
                     intrinsics: CameraIntrinsics, shrink: float = 0.5,
                     min_valid_fraction: float = 0.1,
                     min_depth_extent_m: float = MIN_DEPTH_EXTENT_M
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """3-D centre and size of each box from the depth image it was detected in.

    For each box, the depths sampled are those inside the box, clipped to the
    image and shrunk about its centre by ``shrink`` (0.5 keeps the central half
    of width and height), which keeps most background pixels around the
    object out; ``z`` is their median, robust to the rest. The box centre is back-projected at ``z``.

    Returns ``xyz_m [N, 3]`` (optical frame) and ``extent_m [N, 3]``: box width
    and height in metres at ``z``, and the depth extent as the 10th-90th
    percentile spread of the sampled depths (at least ``min_depth_extent_m``).
    Rows are NaN for boxes with non-finite coordinates, outside the image, or
    with fewer than ``min_valid_fraction`` valid depths in the shrunk box.

    ``depth_m``: ``[H, W]`` float metres, NaN (or <= 0) unknown; ``intrinsics``
    must be for that size (InputError ``bad_size`` otherwise).
    """
    if not 0.0 < shrink <= 1.0:
        raise ConfigError(f"shrink must be in (0, 1], got {shrink}")
    if not 0.0 <= min_valid_fraction <= 1.0:
        raise ConfigError(f"min_valid_fraction must be in [0, 1], got {min_valid_fraction}")
    depth = _check_depth(depth_m)
    check_intrinsics(intrinsics, depth.shape)
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"boxes_xyxy must be [N, 4], got {boxes.shape}", reason="bad_size")
    n = len(boxes)
    h, w = depth.shape
    # Per box: median depth and the 10th-90th percentile spread.
    z = np.full(n, np.nan)
    spread = np.full(n, np.nan)
    finite = np.isfinite(boxes).all(axis=1)
    for i in np.flatnonzero(finite):
        x1, y1, x2, y2 = boxes[i]
        c0, c1 = _shrunk_range(min(x1, x2), max(x1, x2), shrink, w)
        r0, r1 = _shrunk_range(min(y1, y2), max(y1, y2), shrink, h)
        if c1 <= c0 or r1 <= r0:
            continue  # outside the image
        patch = depth[r0:r1, c0:c1]
        with np.errstate(invalid="ignore"):
            values = patch[np.isfinite(patch) & (patch > 0)]
        if values.size == 0 or values.size < min_valid_fraction * patch.size:
            continue
        p10, p50, p90 = np.percentile(values, (10.0, 50.0, 90.0))
        z[i], spread[i] = p50, p90 - p10

    u = 0.5 * (boxes[:, 0] + boxes[:, 2]) - 0.5
    v = 0.5 * (boxes[:, 1] + boxes[:, 3]) - 0.5
    xyz = np.stack(((u - intrinsics.cx) * z / intrinsics.fx,
                    (v - intrinsics.cy) * z / intrinsics.fy, z), axis=1)
    extent = np.stack((np.abs(boxes[:, 2] - boxes[:, 0]) * z / intrinsics.fx,
                       np.abs(boxes[:, 3] - boxes[:, 1]) * z / intrinsics.fy,
                       np.maximum(spread, min_depth_extent_m)), axis=1)
    return xyz.reshape(n, 3).astype(np.float32), extent.reshape(n, 3).astype(np.float32)
