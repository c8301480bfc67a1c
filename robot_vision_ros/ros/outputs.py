"""Messages for the node's detection and depth outputs (pure builders, no node).

``/vision/detections`` (PointCloud2 object table), ``/vision/detections/markers``
(MarkerArray for rviz) and ``/vision/depth/camera_info`` (CameraInfo matching the
published depth image). The depth image itself is
:func:`robot_vision_ros.ros.conversions.depth_m_to_image_msg` with ``32FC1``.
The PointCloud2 packing is :func:`~robot_vision_ros.ros.conversions.pack_pointcloud2`.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Vector3
from sensor_msgs.msg import CameraInfo, PointCloud2
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..core.detections import ObjectTable
from ..core.errors import ConfigError, InputError
from ..core.frames import CameraIntrinsics
from ..core.render import track_color
from .conversions import pack_pointcloud2, pointcloud2_to_rows

#: One row of the ``/vision/detections`` object table, in contract order
#: (offsets 0, 4, ..., 36; point_step 40).
OBJECT_ROW_DTYPE = np.dtype([
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
    ("track_id", "<u4"), ("class_id", "<u4"), ("score", "<f4"),
    ("u1", "<f4"), ("v1", "<f4"), ("u2", "<f4"), ("v2", "<f4"),
])

#: Smallest marker cube edge: NaN or degenerate extents would make invisible boxes.
MIN_MARKER_EXTENT_M = 0.05
#: Label height and its gap above the cube.
TEXT_HEIGHT_M = 0.1
_TEXT_GAP_M = 0.05
_CUBE_ALPHA, _PREDICTED_ALPHA = 0.5, 0.25
#: Marker ids are int32; two per track (cube 2t, label 2t + 1) wrap within it.
_MARKER_ID_MODULUS = 2 ** 30
_UINT32_MAX = np.iinfo(np.uint32).max


# ---------------------------------------------------------------- object table

def _as_uint32(values: np.ndarray, name: str) -> np.ndarray:
    if values.size and (values.min() < 0 or values.max() > _UINT32_MAX):
        raise InputError(f"{name} must fit UINT32 (0..{_UINT32_MAX}), got range "
                         f"{int(values.min())}..{int(values.max())}", reason="bad_size")
    return values.astype(np.uint32)


def object_table_to_rows(table: ObjectTable) -> np.ndarray:
    """ObjectTable -> 1-D :data:`OBJECT_ROW_DTYPE` array, one row per tracked object."""
    tracks = table.tracks
    rows = np.empty(len(table), dtype=OBJECT_ROW_DTYPE)
    rows["x"], rows["y"], rows["z"] = table.xyz_m.T
    rows["track_id"] = _as_uint32(tracks.track_ids, "track_ids")
    rows["class_id"] = _as_uint32(tracks.class_ids, "class_ids")
    rows["score"] = tracks.scores
    rows["u1"], rows["v1"], rows["u2"], rows["v2"] = tracks.boxes_xyxy.T
    return rows


def object_table_to_pointcloud2(table: ObjectTable, header: Header) -> PointCloud2:
    """ObjectTable -> the ``/vision/detections`` PointCloud2 (header of the source frame).

    An empty table gives a valid cloud of width 0 with the same fields.
    ``is_dense`` is False when any object lacks depth (NaN xyz).
    """
    return pack_pointcloud2(object_table_to_rows(table), header)


def pointcloud2_to_object_rows(msg: PointCloud2) -> np.ndarray:
    """``/vision/detections`` PointCloud2 -> 1-D :data:`OBJECT_ROW_DTYPE` array (a copy).

    Fields are taken by name, so extra fields or another field order are accepted.
    """
    return pointcloud2_to_rows(msg, OBJECT_ROW_DTYPE, "an object table")


# ---------------------------------------------------------------- markers

def track_color_rgb(track_id: int) -> Tuple[float, float, float]:
    """The track's colour of the image overlays (:func:`core.render.track_color`), in 0..1."""
    return tuple(c / 255.0 for c in track_color(track_id))


def marker_ids(track_id: int) -> Tuple[int, int]:
    """(cube id, label id) of a track: stable across frames so rviz updates in place."""
    base = (int(track_id) % _MARKER_ID_MODULUS) * 2
    return base, base + 1


def _duration(seconds: float) -> Duration:
    sec = math.floor(seconds)
    return Duration(sec=int(sec), nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def object_table_to_markers(table: ObjectTable, header: Header, lifetime_s: float,
                            namespace: str = "vision") -> MarkerArray:
    """ObjectTable -> ``/vision/detections/markers``: DELETEALL, then per object with
    finite xyz a CUBE (at xyz, size = extent, at least :data:`MIN_MARKER_EXTENT_M`)
    and a TEXT_VIEW_FACING label ``class #id score z=..m`` above it.

    ``lifetime_s`` makes stale markers vanish if the node stops publishing
    (0 = forever). Objects without depth get no markers. Predicted (coasting)
    tracks are drawn fainter.
    """
    if not math.isfinite(lifetime_s) or lifetime_s < 0:
        raise ConfigError(f"marker lifetime_s must be a finite number >= 0, got {lifetime_s}")
    lifetime = _duration(lifetime_s)
    # rviz2 deletes all markers on DELETEALL (newer releases: those of its namespace).
    markers: List[Marker] = [Marker(header=header, ns=namespace, id=0,
                                    action=Marker.DELETEALL)]
    tracks = table.tracks
    extent = np.where(np.isfinite(table.extent_m), table.extent_m, 0.0)
    extent = np.maximum(extent, MIN_MARKER_EXTENT_M).tolist()
    xyz = table.xyz_m.tolist()
    finite = np.isfinite(table.xyz_m).all(axis=1).tolist()
    track_ids = tracks.track_ids.tolist()
    scores = tracks.scores.tolist()
    predicted = tracks.is_predicted.tolist()
    for i in range(len(table)):
        if not finite[i]:
            continue
        x, y, z = xyz[i]
        sx, sy, sz = extent[i]
        cube_id, text_id = marker_ids(track_ids[i])
        r, g, b = track_color_rgb(track_ids[i])
        markers.append(Marker(
            header=header, ns=namespace, id=cube_id, type=Marker.CUBE, action=Marker.ADD,
            pose=Pose(position=Point(x=x, y=y, z=z)),  # orientation defaults to identity
            scale=Vector3(x=sx, y=sy, z=sz),
            color=ColorRGBA(r=r, g=g, b=b, a=_PREDICTED_ALPHA if predicted[i] else _CUBE_ALPHA),
            lifetime=lifetime))
        # Optical frame: y points down, so "above" is -y.
        label_y = y - sy / 2.0 - _TEXT_GAP_M - TEXT_HEIGHT_M / 2.0
        markers.append(Marker(
            header=header, ns=namespace, id=text_id, type=Marker.TEXT_VIEW_FACING,
            action=Marker.ADD,
            pose=Pose(position=Point(x=x, y=label_y, z=z)),
            scale=Vector3(x=0.0, y=0.0, z=TEXT_HEIGHT_M),
            color=ColorRGBA(r=r, g=g, b=b, a=1.0), lifetime=lifetime,
            text=f"{table.class_name(i)} #{track_ids[i]} {scores[i]:.2f} z={z:.2f}m"))
    return MarkerArray(markers=markers)


# ---------------------------------------------------------------- camera info

def intrinsics_to_camera_info(k: CameraIntrinsics, header: Header) -> CameraInfo:
    """Pinhole intrinsics -> CameraInfo (plumb_bob, D zeros, R identity, P = [K | 0])."""
    info = CameraInfo(header=header, width=int(k.width), height=int(k.height),
                      distortion_model="plumb_bob")
    info.k = [float(k.fx), 0.0, float(k.cx), 0.0, float(k.fy), float(k.cy), 0.0, 0.0, 1.0]
    info.p = [float(k.fx), 0.0, float(k.cx), 0.0,
              0.0, float(k.fy), float(k.cy), 0.0,
              0.0, 0.0, 1.0, 0.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.d = [0.0] * 5
    return info


def depth_camera_info(intrinsics: CameraIntrinsics, width: int, height: int,
                      header: Header) -> CameraInfo:
    """``/vision/depth/camera_info``: ``intrinsics`` scaled to the published depth
    image size ``width`` x ``height`` (see :meth:`CameraIntrinsics.scaled`)."""
    if int(width) <= 0 or int(height) <= 0:
        raise InputError(f"depth image size must be positive, got {width}x{height}",
                         reason="bad_size")
    if intrinsics.width <= 0 or intrinsics.height <= 0:
        raise InputError(f"intrinsics size must be positive, got "
                         f"{intrinsics.width}x{intrinsics.height}", reason="bad_size")
    same_size = (int(width), int(height)) == (intrinsics.width, intrinsics.height)
    k = intrinsics if same_size else intrinsics.scaled(int(width), int(height))
    return intrinsics_to_camera_info(k, header)


def camera_info_to_intrinsics(msg: CameraInfo) -> Optional[CameraIntrinsics]:
    """CameraInfo -> intrinsics, or None when uncalibrated (K all zeros, fx or fy
    not positive, non-finite values, zero image size)."""
    fx, fy, cx, cy = (float(msg.k[0]), float(msg.k[4]), float(msg.k[2]), float(msg.k[5]))
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)):
        return None
    if fx <= 0.0 or fy <= 0.0 or msg.width <= 0 or msg.height <= 0:
        return None
    return CameraIntrinsics(fx, fy, cx, cy, int(msg.width), int(msg.height))
