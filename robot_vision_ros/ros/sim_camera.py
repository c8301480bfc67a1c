"""``sim_camera``: a simulated RGB-D camera (procedural numpy scene, or pybullet).

Publishes ``camera/color/image_raw`` (rgb8), ``camera/depth/image_raw``
(16UC1 millimetres, or 32FC1 metres) and ``camera/color/camera_info`` with
one stamp per frame, at ``rate_hz``, and with the same header the simulator's
ground truth: ``camera/ground_truth/objects`` (PointCloud2 table, see
:mod:`.ground_truth_msgs`) and ``camera/ground_truth/depth`` (32FC1, exact).
``depth_holes`` blanks that fraction of the sensor depth in blobs, as a real
depth camera loses surfaces, while the ground truth stays exact. Frames are
rendered and encoded ahead of time into a small cache so the publish timer
never waits on rendering.
"""
from __future__ import annotations

import sys
from typing import List, Optional, Tuple

import numpy as np

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from ..core.errors import ConfigError
from ..core.frames import CameraIntrinsics
from ..core.ground_truth import GroundTruth, remove_blobs
from ..core.pybullet_scene import render_sequence
from ..core.sim_scene import SimScene
from .conversions import depth_m_to_image_msg, rgb_to_image_msg
from .ground_truth_msgs import ground_truth_depth_msg, ground_truth_to_pointcloud2
from .outputs import intrinsics_to_camera_info
from .processes import spin_main
from .qos import keep_last


def _render(p: dict) -> Tuple[List[Tuple[np.ndarray, GroundTruth]], CameraIntrinsics]:
    """``cache_frames`` (rgb, ground truth) pairs of the chosen scene, and its intrinsics.

    ``pybullet``: objects from ``pybullet_data`` on a table, rendered once per
    seed and size with exact depth, then cached on disk (about 0.1 s a VGA frame
    the first time); ``procedural``: the numpy scene, instant.
    """
    count = max(1, p["cache_frames"])
    if p["scene"] == "pybullet":
        sequence = render_sequence(p["seed"], count, p["width"], p["height"],
                                   num_objects=max(1, p["num_objects"]))
        return ([(sequence.rgb[i], sequence.ground_truth(i)) for i in range(count)],
                sequence.intrinsics)
    scene = SimScene(p["width"], p["height"], p["num_objects"], p["seed"], fps=p["rate_hz"])
    frames = [scene.render(i) for i in range(count)]
    return [(f.rgb, scene.ground_truth(f)) for f in frames], scene.intrinsics


def sensor_depth_m(truth: GroundTruth, holes: float, seed: int) -> np.ndarray:
    """The depth camera's view of ``truth``: exact, with ``holes`` of the surface
    pixels blanked (NaN) in blobs, deterministic for ``seed`` and the frame."""
    depth = truth.depth_image_m
    if holes <= 0:
        return depth
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    removed = remove_blobs(valid, holes, seed=seed * 100_003 + truth.frame_index)
    return np.where(removed, np.float32(np.nan), depth)


class SimCamera(Node):
    """Publishes a deterministic simulated RGB-D stream."""

    def __init__(self, **kwargs) -> None:
        super().__init__("sim_camera", **kwargs)
        p = {name: self.declare_parameter(name, default).value for name, default in (
            ("rate_hz", 30.0), ("width", 640), ("height", 480), ("num_objects", 5),
            ("seed", 0), ("depth_encoding", "16UC1"), ("frame_id", "camera_color_optical_frame"),
            ("cache_frames", 90), ("max_frames", 0), ("reliability", "reliable"),
            ("scene", "procedural"), ("publish_ground_truth", True), ("depth_holes", 0.0))}
        if p["depth_encoding"] not in ("16UC1", "32FC1"):
            raise ConfigError(f"depth_encoding must be 16UC1 or 32FC1, got {p['depth_encoding']}")
        if not p["rate_hz"] > 0:
            raise ConfigError(f"rate_hz must be > 0, got {p['rate_hz']}")
        if p["scene"] not in ("procedural", "pybullet"):
            raise ConfigError(f"scene must be procedural or pybullet, got {p['scene']!r}")
        if not 0.0 <= p["depth_holes"] < 1.0:
            raise ConfigError(f"depth_holes must be in [0, 1), got {p['depth_holes']}")
        self._p = p
        frames, intrinsics = _render(p)
        qos = keep_last(p["reliability"], 1)
        self._rgb_pub = self.create_publisher(Image, "camera/color/image_raw", qos)
        self._depth_pub = self.create_publisher(Image, "camera/depth/image_raw", qos)
        self._info_pub = self.create_publisher(CameraInfo, "camera/color/camera_info", qos)
        truth_on = bool(p["publish_ground_truth"])
        if truth_on:
            self._objects_pub = self.create_publisher(PointCloud2,
                                                      "camera/ground_truth/objects", qos)
            self._truth_depth_pub = self.create_publisher(Image, "camera/ground_truth/depth", qos)
        # Pre-render and pre-encode a loop of frames: publishing is then a copy.
        self._cache: List[tuple] = []
        blank = Header(frame_id=p["frame_id"])
        for rgb, truth in frames:
            depth_m = sensor_depth_m(truth, p["depth_holes"], p["seed"])
            self._cache.append((rgb_to_image_msg(rgb, blank),
                                depth_m_to_image_msg(depth_m, blank,
                                                     encoding=p["depth_encoding"]),
                                ground_truth_to_pointcloud2(truth, intrinsics, blank)
                                if truth_on else None,
                                ground_truth_depth_msg(truth, blank) if truth_on else None))
        self._info = intrinsics_to_camera_info(intrinsics, blank)
        self._index = 0
        self._timer = self.create_timer(1.0 / p["rate_hz"], self._tick)
        self.get_logger().info(f"sim camera: {p['scene']} scene, {p['width']}x{p['height']} at "
                               f"{p['rate_hz']} Hz, {p['num_objects']} objects, seed {p['seed']}, "
                               f"depth holes {p['depth_holes']:.0%}, ground truth "
                               f"{'on' if truth_on else 'off'}")

    def _tick(self) -> None:
        max_frames = self._p["max_frames"]
        if max_frames and self._index >= max_frames:
            return
        rgb, depth, objects, truth_depth = self._cache[self._index % len(self._cache)]
        stamp = self.get_clock().now().to_msg()
        for msg in (rgb, depth, self._info, objects, truth_depth):
            if msg is not None:
                msg.header.stamp = stamp
                msg.header.frame_id = self._p["frame_id"]
        self._rgb_pub.publish(rgb)
        self._depth_pub.publish(depth)
        self._info_pub.publish(self._info)
        if objects is not None:
            self._objects_pub.publish(objects)
            self._truth_depth_pub.publish(truth_depth)
        self._index += 1


def main(args: Optional[List[str]] = None) -> int:
    """Entry point of ``ros2 run robot_vision_ros sim_camera``."""
    return spin_main(SimCamera, "sim_camera", args)


if __name__ == "__main__":
    sys.exit(main())
