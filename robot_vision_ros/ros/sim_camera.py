"""``sim_camera``: a simulated RGB-D camera (procedural numpy scene, or pybullet).

Publishes ``camera/color/image_raw`` (rgb8), ``camera/depth/image_raw``
(16UC1 millimetres, or 32FC1 metres) and ``camera/color/camera_info`` with
one stamp per frame, at ``rate_hz``. Frames are rendered ahead of time into a
small cache so the publish timer never waits on rendering.
"""
from __future__ import annotations

import sys
from typing import List, Optional, Tuple

import numpy as np

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..core.errors import ConfigError
from ..core.frames import CameraIntrinsics
from ..core.pybullet_scene import render_sequence
from ..core.sim_scene import SimScene
from .conversions import depth_m_to_image_msg, rgb_to_image_msg
from .outputs import intrinsics_to_camera_info
from .processes import spin_main
from .qos import keep_last


def _render(p: dict) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], CameraIntrinsics]:
    """``cache_frames`` (rgb, depth_m) pairs of the chosen scene, and its intrinsics.

    ``pybullet``: objects from ``pybullet_data`` on a table, rendered once per
    seed and size with exact depth, then cached on disk (about 0.1 s a VGA frame
    the first time); ``procedural``: the numpy scene, instant.
    """
    count = max(1, p["cache_frames"])
    if p["scene"] == "pybullet":
        sequence = render_sequence(p["seed"], count, p["width"], p["height"],
                                   num_objects=max(1, p["num_objects"]))
        return list(zip(sequence.rgb, sequence.depth_m)), sequence.intrinsics
    scene = SimScene(p["width"], p["height"], p["num_objects"], p["seed"], fps=p["rate_hz"])
    frames = [scene.render(i) for i in range(count)]
    return [(f.rgb, f.depth_m) for f in frames], scene.intrinsics


class SimCamera(Node):
    """Publishes a deterministic simulated RGB-D stream."""

    def __init__(self, **kwargs) -> None:
        super().__init__("sim_camera", **kwargs)
        p = {name: self.declare_parameter(name, default).value for name, default in (
            ("rate_hz", 30.0), ("width", 640), ("height", 480), ("num_objects", 5),
            ("seed", 0), ("depth_encoding", "16UC1"), ("frame_id", "camera_color_optical_frame"),
            ("cache_frames", 90), ("max_frames", 0), ("reliability", "reliable"),
            ("scene", "procedural"))}
        if p["depth_encoding"] not in ("16UC1", "32FC1"):
            raise ConfigError(f"depth_encoding must be 16UC1 or 32FC1, got {p['depth_encoding']}")
        if not p["rate_hz"] > 0:
            raise ConfigError(f"rate_hz must be > 0, got {p['rate_hz']}")
        if p["scene"] not in ("procedural", "pybullet"):
            raise ConfigError(f"scene must be procedural or pybullet, got {p['scene']!r}")
        self._p = p
        frames, intrinsics = _render(p)
        qos = keep_last(p["reliability"], 1)
        self._rgb_pub = self.create_publisher(Image, "camera/color/image_raw", qos)
        self._depth_pub = self.create_publisher(Image, "camera/depth/image_raw", qos)
        self._info_pub = self.create_publisher(CameraInfo, "camera/color/camera_info", qos)
        # Pre-render and pre-encode a loop of frames: publishing is then a copy.
        self._cache: List[tuple] = []
        blank = Header(frame_id=p["frame_id"])
        for rgb, depth_m in frames:
            self._cache.append((rgb_to_image_msg(rgb, blank),
                                depth_m_to_image_msg(depth_m, blank,
                                                     encoding=p["depth_encoding"])))
        self._info = intrinsics_to_camera_info(intrinsics, blank)
        self._index = 0
        self._timer = self.create_timer(1.0 / p["rate_hz"], self._tick)
        self.get_logger().info(f"sim camera: {p['scene']} scene, {p['width']}x{p['height']} at "
                               f"{p['rate_hz']} Hz, {p['num_objects']} objects, seed {p['seed']}")

    def _tick(self) -> None:
        max_frames = self._p["max_frames"]
        if max_frames and self._index >= max_frames:
            return
        rgb, depth = self._cache[self._index % len(self._cache)]
        stamp = self.get_clock().now().to_msg()
        for msg in (rgb, depth, self._info):
            msg.header.stamp = stamp
            msg.header.frame_id = self._p["frame_id"]
        self._rgb_pub.publish(rgb)
        self._depth_pub.publish(depth)
        self._info_pub.publish(self._info)
        self._index += 1


def main(args: Optional[List[str]] = None) -> int:
    """Entry point of ``ros2 run robot_vision_ros sim_camera``."""
    return spin_main(SimCamera, "sim_camera", args)


if __name__ == "__main__":
    sys.exit(main())
