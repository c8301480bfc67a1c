"""``video_camera``: publish a video file, an image folder, a camera device, an RGB-D
recording or a ROS 2 bag as a camera.

Publishes ``camera/color/image_raw`` (rgb8) and ``camera/color/camera_info``
at the file's rate or ``rate_hz``, looping or once; for RGB-D recordings and
bags (a folder with ``rgb/`` + ``depth/``, or a bag directory read with
``rosbags``, no ROS needed) also ``camera/depth/image_raw`` (32FC1 metres).
Camera info comes from a ROS calibration YAML (``camera_info_file``) or a
pinhole guess (60 degree horizontal field of view) when none is given.
Parameters: ``source`` (path or device index), ``rate_hz`` (0 = the file's
rate), ``loop``, ``frame_id``, ``camera_info_file``, ``bag_rgb_topic``,
``bag_depth_topic`` (a bag without a depth topic plays its colour topic only).
"""
from __future__ import annotations

import sys
from typing import List, Optional

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..core.errors import ConfigError, InputError
from ..core.video_source import (BagColourSource, RgbdSource, VideoSource, is_bag,
                                 is_rgbd_recording, load_camera_info_yaml, pinhole_guess)
from .conversions import depth_m_to_image_msg, rgb_to_image_msg
from .outputs import intrinsics_to_camera_info
from .processes import spin_main
from .qos import keep_last


class VideoCamera(Node):
    """Publishes frames of a :class:`VideoSource` on a timer."""

    def __init__(self, **kwargs) -> None:
        super().__init__("video_camera", **kwargs)
        source = self.declare_parameter("source", "").value
        rate_hz = float(self.declare_parameter("rate_hz", 0.0).value)
        self._loop = bool(self.declare_parameter("loop", True).value)
        self._frame_id = self.declare_parameter("frame_id", "camera_color_optical_frame").value
        info_file = self.declare_parameter("camera_info_file", "").value
        bag_rgb = self.declare_parameter("bag_rgb_topic", "").value
        bag_depth = self.declare_parameter("bag_depth_topic", "").value
        if not source:
            raise ConfigError("parameter 'source' is empty: give a video file, an image folder "
                              "or a camera device index")
        if is_bag(source) and not bag_depth:
            self._source = BagColourSource(source, bag_rgb)  # a colour-only camera
        elif is_rgbd_recording(source):
            self._source = RgbdSource(source, bag_rgb, bag_depth)
        else:
            self._source = VideoSource(source)
        rate = rate_hz if rate_hz > 0 else self._source.fps
        if not rate > 0:
            raise ConfigError(f"rate_hz must be > 0 (the source reports {self._source.fps})")
        k = (load_camera_info_yaml(info_file) if info_file
             else pinhole_guess(self._source.width, self._source.height))
        self._info = intrinsics_to_camera_info(k, Header(frame_id=self._frame_id))
        qos = keep_last("reliable", 1)
        self._rgb_pub = self.create_publisher(Image, "camera/color/image_raw", qos)
        self._info_pub = self.create_publisher(CameraInfo, "camera/color/camera_info", qos)
        self._depth_pub = (self.create_publisher(Image, "camera/depth/image_raw", qos)
                           if isinstance(self._source, RgbdSource) else None)
        self.published = 0
        self._timer = self.create_timer(1.0 / rate, self._tick)
        self.get_logger().info(f"video camera: {source} ({self._source.width}x"
                               f"{self._source.height}) at {rate:g} Hz, loop={self._loop}")

    def _tick(self) -> None:
        try:
            rgb = self._source.read()
        except InputError as exc:
            self.get_logger().warning(f"skipping unreadable frame: {exc}")
            return
        if rgb is None:
            if not self._loop:
                self.get_logger().info(f"end of source after {self.published} frames")
                self._timer.cancel()
                return
            self._source.rewind()
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self._frame_id)
        self._info.header = header
        if self._depth_pub is not None:
            rgb, depth_m = rgb
            self._depth_pub.publish(depth_m_to_image_msg(depth_m, header))
        self._rgb_pub.publish(rgb_to_image_msg(rgb, header))
        self._info_pub.publish(self._info)
        self.published += 1


def main(args: Optional[List[str]] = None) -> int:
    """Entry point of ``ros2 run robot_vision_ros video_camera --ros-args -p source:=FILE``."""
    return spin_main(VideoCamera, "video_camera", args)


if __name__ == "__main__":
    sys.exit(main())
