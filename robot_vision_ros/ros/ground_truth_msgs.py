"""Messages of the simulator's ground truth (pure builders, no node).

``camera/ground_truth/objects``: a PointCloud2 table, one point per object
(:data:`GROUND_TRUTH_ROW_DTYPE`), packed like ``/vision/detections`` with
:func:`~robot_vision_ros.ros.conversions.pack_pointcloud2`.
``camera/ground_truth/depth``: the exact depth as 32FC1 metres
(:func:`~robot_vision_ros.ros.conversions.depth_m_to_image_msg`).
"""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header

from ..core.errors import InputError
from ..core.frames import CameraIntrinsics
from ..core.ground_truth import GroundTruth, object_points_m
from .conversions import depth_m_to_image_msg, pack_pointcloud2, pointcloud2_to_rows

#: One row of ``camera/ground_truth/objects`` (offsets 0, 4, ..., 36; point_step 40).
GROUND_TRUTH_ROW_DTYPE = np.dtype([
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
    ("object_id", "<u4"), ("class_id", "<u4"),
    ("u1", "<f4"), ("v1", "<f4"), ("u2", "<f4"), ("v2", "<f4"),
    ("depth_m", "<f4"),
])
_UINT32_MAX = int(np.iinfo(np.uint32).max)


def ground_truth_to_rows(truth: GroundTruth, intrinsics: CameraIntrinsics) -> np.ndarray:
    """GroundTruth -> 1-D :data:`GROUND_TRUTH_ROW_DTYPE` array: ``x y z`` is the box
    centre back-projected at the object's depth (optical frame, NaN if unknown)."""
    if len(truth) and max(truth.object_ids.max(), truth.class_ids.max()) > _UINT32_MAX:
        raise InputError(f"object and class ids must fit UINT32 (<= {_UINT32_MAX})",
                         reason="bad_size")
    rows = np.empty(len(truth), dtype=GROUND_TRUTH_ROW_DTYPE)
    rows["x"], rows["y"], rows["z"] = object_points_m(truth, intrinsics).T
    rows["object_id"] = truth.object_ids  # GroundTruth checked they are >= 1 (and classes >= 0)
    rows["class_id"] = truth.class_ids
    rows["u1"], rows["v1"], rows["u2"], rows["v2"] = truth.boxes_xyxy.T
    rows["depth_m"] = truth.depth_m
    return rows


def ground_truth_to_pointcloud2(truth: GroundTruth, intrinsics: CameraIntrinsics,
                                header: Header) -> PointCloud2:
    """GroundTruth -> the ``camera/ground_truth/objects`` PointCloud2 (width 0 if empty)."""
    return pack_pointcloud2(ground_truth_to_rows(truth, intrinsics), header)


def ground_truth_depth_msg(truth: GroundTruth, header: Header) -> Image:
    """GroundTruth -> the ``camera/ground_truth/depth`` image (32FC1 metres, NaN = none)."""
    return depth_m_to_image_msg(truth.depth_image_m, header, encoding="32FC1")


def pointcloud2_to_ground_truth_rows(msg: PointCloud2) -> np.ndarray:
    """``camera/ground_truth/objects`` -> 1-D :data:`GROUND_TRUTH_ROW_DTYPE` array (a copy).

    Fields are taken by name; a missing one raises InputError (``missing_field``).
    """
    return pointcloud2_to_rows(msg, GROUND_TRUTH_ROW_DTYPE, "a ground-truth table")
