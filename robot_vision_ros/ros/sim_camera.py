"""``sim_camera``: a simulated RGB-D camera publishing the procedural scene.

Publishes ``camera/color/image_raw`` (rgb8), ``camera/depth/image_raw``
(16UC1 millimetres, or 32FC1 metres) and ``camera/color/camera_info`` with
one stamp per frame, at ``rate_hz``. Frames are rendered ahead of time into a
small cache so the publish timer never waits on rendering.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..core.errors import ConfigError
from ..core.sim_scene import SimScene
from .conversions import depth_m_to_image_msg, rgb_to_image_msg
from .outputs import intrinsics_to_camera_info
from .processes import spin_main
from .qos import keep_last


class SimCamera(Node):
    """Publishes a deterministic simulated RGB-D stream."""

    def __init__(self, **kwargs) -> None:
        super().__init__("sim_camera", **kwargs)
        p = {name: self.declare_parameter(name, default).value for name, default in (
            ("rate_hz", 30.0), ("width", 640), ("height", 480), ("num_objects", 5),
            ("seed", 0), ("depth_encoding", "16UC1"), ("frame_id", "camera_color_optical_frame"),
            ("cache_frames", 90), ("max_frames", 0), ("reliability", "reliable"))}
        if p["depth_encoding"] not in ("16UC1", "32FC1"):
            raise ConfigError(f"depth_encoding must be 16UC1 or 32FC1, got {p['depth_encoding']}")
        if not p["rate_hz"] > 0:
            raise ConfigError(f"rate_hz must be > 0, got {p['rate_hz']}")
        self._p = p
        self._scene = SimScene(p["width"], p["height"], p["num_objects"], p["seed"],
                               fps=p["rate_hz"])
        qos = keep_last(p["reliability"], 1)
        self._rgb_pub = self.create_publisher(Image, "camera/color/image_raw", qos)
        self._depth_pub = self.create_publisher(Image, "camera/depth/image_raw", qos)
        self._info_pub = self.create_publisher(CameraInfo, "camera/color/camera_info", qos)
        # Pre-render and pre-encode a loop of frames: publishing is then a copy.
        self._cache: List[tuple] = []
        blank = Header(frame_id=p["frame_id"])
        for i in range(max(1, p["cache_frames"])):
            frame = self._scene.render(i)
            self._cache.append((rgb_to_image_msg(frame.rgb, blank),
                                depth_m_to_image_msg(frame.depth_m, blank,
                                                     encoding=p["depth_encoding"])))
        self._info = intrinsics_to_camera_info(self._scene.intrinsics, blank)
        self._index = 0
        self._timer = self.create_timer(1.0 / p["rate_hz"], self._tick)
        self.get_logger().info(f"sim camera: {p['width']}x{p['height']} at {p['rate_hz']} Hz, "
                               f"{p['num_objects']} objects, seed {p['seed']}")

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
