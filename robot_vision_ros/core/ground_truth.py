"""Simulator ground truth per frame, and scoring the node's outputs against it (numpy).

* :class:`GroundTruth`: per-object boxes, ids, classes and depths of one frame
  plus the exact depth image, shapes checked at construction.
* :func:`ground_truth_from_labels`: builds it from an object-id image (the
  procedural scene's object mask, pybullet's segmentation mapped to object ids),
  so both simulators define a box the same way: the visible pixels of the object.
* :func:`object_points_m`: box centre + object depth -> points in the camera
  optical frame (the ``x y z`` of the ground-truth topic).
* :func:`remove_blobs`: sensor holes (random ellipses and rectangles) for a
  simulated depth camera whose truth stays exact.
* :func:`depth_error`, :func:`match_boxes`, :func:`box_recall`,
  :func:`box_precision`: pure scores for tests, benchmarks and ``make demo``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import cv2
import numpy as np
from scipy import ndimage

from ..tracking.assignment import iou_matrix, linear_assignment
from .depth_fusion import depth_metrics
from .errors import ConfigError, InputError
from .frames import CameraIntrinsics


def _column(values: object, dtype: type, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D [N] array, got shape {arr.shape}",
                         reason="bad_size")
    return arr


@dataclass(frozen=True)
class GroundTruth:
    """What the simulator knows about frame ``frame_index``.

    ``boxes_xyxy [N, 4]`` float32: the bounding box of each object's visible
    pixels in source-image pixels (continuous convention, pixel ``(0, 0)``
    covers ``[0, 1) x [0, 1)``, so ``x2 = last column + 1``).
    ``object_ids [N]`` int64: stable across frames (>= 1). ``class_ids [N]``
    int64: the scene's object class (>= 0). ``depth_m [N]`` float32: median
    depth of the object's visible pixels (NaN if none is finite).
    ``depth_image_m [H, W]`` float32: exact depth, NaN where no surface.
    """

    frame_index: int
    boxes_xyxy: np.ndarray
    object_ids: np.ndarray
    class_ids: np.ndarray
    depth_m: np.ndarray
    depth_image_m: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.ascontiguousarray(self.boxes_xyxy, dtype=np.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InputError(f"boxes_xyxy must have shape [N, 4], got {boxes.shape}",
                             reason="bad_size")
        object_ids = _column(self.object_ids, np.int64, "object_ids")
        class_ids = _column(self.class_ids, np.int64, "class_ids")
        depth_m = _column(self.depth_m, np.float32, "depth_m")
        n = len(boxes)
        if not n == len(object_ids) == len(class_ids) == len(depth_m):
            raise InputError(f"lengths differ: boxes {n}, object_ids {len(object_ids)}, "
                             f"class_ids {len(class_ids)}, depth_m {len(depth_m)}",
                             reason="bad_size")
        image = np.asarray(self.depth_image_m)
        if image.ndim != 2 or image.size == 0 or image.dtype.kind != "f":
            raise InputError(f"depth_image_m must be a non-empty [H, W] float array, got "
                             f"{image.dtype} {image.shape}", reason="bad_size")
        image = np.ascontiguousarray(image, dtype=np.float32)
        h, w = image.shape
        if n and not (np.isfinite(boxes).all() and (boxes[:, 0] >= 0).all()
                      and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= w).all()
                      and (boxes[:, 3] <= h).all() and (boxes[:, 2] > boxes[:, 0]).all()
                      and (boxes[:, 3] > boxes[:, 1]).all()):
            raise InputError(f"boxes_xyxy must be finite, non-empty and inside the {w}x{h} "
                             f"image, got {boxes.tolist()}", reason="bad_size")
        if n and (object_ids.min() < 1 or class_ids.min() < 0):
            raise InputError("object_ids must be >= 1 and class_ids >= 0",
                             reason="bad_size")
        if len(np.unique(object_ids)) != n:
            raise InputError(f"object_ids must be unique, got {object_ids.tolist()}",
                             reason="bad_size")
        object.__setattr__(self, "frame_index", int(self.frame_index))
        for name, value in (("boxes_xyxy", boxes), ("object_ids", object_ids),
                            ("class_ids", class_ids), ("depth_m", depth_m),
                            ("depth_image_m", image)):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.object_ids)


def ground_truth_from_labels(frame_index: int, labels: np.ndarray, depth_image_m: np.ndarray,
                             class_of: Mapping[int, int], min_pixels: int = 1) -> GroundTruth:
    """Ground truth from ``labels [H, W]`` (object id per pixel, 0 = no object).

    Each id in ``class_of`` with at least ``min_pixels`` visible pixels gives a
    row (sorted by id): the bounding box of those pixels and the median of their
    finite depths. Ids in ``labels`` but not in ``class_of`` are an error, so a
    scene cannot publish an object of unknown class.
    """
    labels = np.asarray(labels)
    depth = np.asarray(depth_image_m)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise InputError(f"labels must be an integer [H, W] array, got {labels.dtype} "
                         f"{labels.shape}", reason="bad_size")
    if labels.shape != depth.shape:
        raise InputError(f"labels {labels.shape} and depth_image_m {depth.shape} differ in "
                         f"shape", reason="bad_size")
    if min_pixels < 1:
        raise ConfigError(f"min_pixels must be >= 1, got {min_pixels}")
    if labels.size and labels.min() < 0:
        raise InputError("labels must be >= 0 (0 = no object)", reason="bad_size")
    present = np.unique(labels)
    present = present[present > 0]
    unknown = [int(i) for i in present if int(i) not in class_of]
    if unknown:
        raise InputError(f"labels hold object ids {unknown} with no class", reason="bad_size")
    boxes, ids, classes, depths = [], [], [], []
    # find_objects gives every id's bounding slices in one pass over the image.
    slices = ndimage.find_objects(labels.astype(np.int64, copy=False)) if present.size else []
    for object_id in present.tolist():
        rows, cols = slices[object_id - 1]
        mine = labels[rows, cols] == object_id
        if int(mine.sum()) < min_pixels:
            continue
        values = depth[rows, cols][mine]
        values = values[np.isfinite(values)]
        boxes.append((cols.start, rows.start, cols.stop, rows.stop))
        ids.append(object_id)
        classes.append(int(class_of[object_id]))
        depths.append(float(np.median(values)) if values.size else math.nan)
    return GroundTruth(frame_index, np.array(boxes, np.float32).reshape(-1, 4),
                       np.array(ids, np.int64), np.array(classes, np.int64),
                       np.array(depths, np.float32), depth.astype(np.float32, copy=False))


def object_points_m(truth: GroundTruth, intrinsics: CameraIntrinsics) -> np.ndarray:
    """``[N, 3]`` float32 box centres back-projected at each object's depth (optical
    frame: x right, y down, z forward), NaN where the depth is unknown."""
    boxes = truth.boxes_xyxy.astype(np.float64)
    z = truth.depth_m.astype(np.float64)
    # Box edges are continuous coordinates; the intrinsics put pixel centres on integers.
    u = 0.5 * (boxes[:, 0] + boxes[:, 2]) - 0.5
    v = 0.5 * (boxes[:, 1] + boxes[:, 3]) - 0.5
    xyz = np.stack(((u - intrinsics.cx) * z / intrinsics.fx,
                    (v - intrinsics.cy) * z / intrinsics.fy, z), axis=1)
    return xyz.reshape(len(truth), 3).astype(np.float32)


def remove_blobs(valid: np.ndarray, fraction: float = 0.3, seed: int = 0) -> np.ndarray:
    """Mask of removed pixels: random ellipses and rectangles until ``fraction`` of
    the ``valid`` pixels is covered (overshoot at most one blob, a few percent).

    Blob sizes scale with the image (semi-axes 3-12 % of the shorter side), so
    320x240 and 640x480 lose the same structures. Deterministic for ``seed``.
    The sim camera's ``depth_holes`` and ``tools.eval_depth`` both use it.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction}")
    valid = np.asarray(valid, dtype=bool)
    if valid.ndim != 2:
        raise ConfigError(f"valid must be an [H, W] mask, got shape {valid.shape}")
    n_valid = int(valid.sum())
    h, w = valid.shape
    mask = np.zeros((h, w), np.uint8)
    if n_valid == 0:
        return mask.astype(bool)
    rng = np.random.default_rng(seed)
    short = min(h, w)
    removed = 0
    for _ in range(100_000):  # a bound only; typically 20-60 blobs
        if removed >= fraction * n_valid:
            break
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        ax, ay = (rng.uniform(0.03, 0.12, 2) * short).astype(int) + 1
        if rng.random() < 0.5:
            cv2.ellipse(mask, (cx, cy), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360,
                        1, thickness=-1)
        else:
            cv2.rectangle(mask, (cx - int(ax), cy - int(ay)), (cx + int(ax), cy + int(ay)), 1,
                          thickness=-1)
        removed = int((mask.astype(bool) & valid).sum())
    return mask.astype(bool) & valid


# ---------------------------------------------------------------- scores

def depth_error(estimate_m: np.ndarray, truth_m: np.ndarray,
                mask: Optional[np.ndarray] = None) -> Dict[str, float]:
    """AbsRel, RMSE (metres) and delta < 1.25 of ``estimate_m`` against ``truth_m``.

    Only pixels (inside ``mask`` if given) where both are finite and > 0 are
    scored (:func:`core.depth_fusion.depth_metrics`); the others are counted,
    never an error: ``n_truth_invalid`` pixels without truth, ``n_missing``
    with truth but no estimate. ``valid_fraction`` = scored / considered pixels,
    ``coverage`` = scored / pixels with truth. Metrics are NaN when nothing is
    scored. Different sizes raise InputError (``bad_size``).
    """
    scores: Dict[str, float] = dict(depth_metrics(estimate_m, truth_m, mask))
    truth = np.asarray(truth_m)
    with np.errstate(invalid="ignore"):
        considered = (np.ones(truth.shape, bool) if mask is None
                      else np.asarray(mask).astype(bool))
        has_truth = considered & np.isfinite(truth) & (truth > 0)
    n_considered, n_truth = int(considered.sum()), int(has_truth.sum())
    scores["n_truth_invalid"] = n_considered - n_truth
    scores["n_missing"] = n_truth - int(scores["n_pixels"])
    scores["valid_fraction"] = (scores["n_pixels"] / n_considered if n_considered
                                else math.nan)
    return scores


def _boxes(boxes_xyxy: np.ndarray, name: str) -> np.ndarray:
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"{name} must have shape [N, 4], got {boxes.shape}", reason="bad_size")
    return boxes


def match_boxes(detected_boxes_xyxy: np.ndarray, truth_boxes_xyxy: np.ndarray,
                iou: float = 0.5) -> int:
    """Number of one-to-one pairs (optimal assignment) with IoU >= ``iou``."""
    if not 0.0 < iou <= 1.0:
        raise ConfigError(f"iou must be in (0, 1], got {iou}")
    detected = _boxes(detected_boxes_xyxy, "detected_boxes_xyxy")
    truth = _boxes(truth_boxes_xyxy, "truth_boxes_xyxy")
    overlap = iou_matrix(detected, truth)
    matches, _, _ = linear_assignment(1.0 - overlap, max_cost=1.0 - iou + 1e-9)
    return int(len(matches))


def box_recall(detected_boxes_xyxy: np.ndarray, truth_boxes_xyxy: np.ndarray,
               iou: float = 0.5) -> float:
    """Fraction of truth boxes matched by a detection at IoU >= ``iou`` (NaN: no truth)."""
    n_truth = len(_boxes(truth_boxes_xyxy, "truth_boxes_xyxy"))
    matched = match_boxes(detected_boxes_xyxy, truth_boxes_xyxy, iou)
    return matched / n_truth if n_truth else math.nan


def box_precision(detected_boxes_xyxy: np.ndarray, truth_boxes_xyxy: np.ndarray,
                  iou: float = 0.5) -> float:
    """Fraction of detections that match a truth box at IoU >= ``iou`` (NaN: none)."""
    n_detected = len(_boxes(detected_boxes_xyxy, "detected_boxes_xyxy"))
    matched = match_boxes(detected_boxes_xyxy, truth_boxes_xyxy, iou)
    return matched / n_detected if n_detected else math.nan
