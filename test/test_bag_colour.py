"""Colour-only ROS 2 bags (real vtest.avi frames written with rosbags) as a camera.

Unit tier: the bag source reads the frames back exactly, at the bag's rate.
Cross-process: ``video_camera`` plays the bag over real Fast DDS into the node.
"""
from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np
import pytest
import rclpy
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray

from robot_vision_ros.core.errors import ConfigError
from robot_vision_ros.core.video_source import BagColourSource, is_bag

from conftest import asset_path
from bag_writer import write_image_bag
from ros_probe import Probe, running


def _vtest(count: int) -> List[np.ndarray]:
    capture = cv2.VideoCapture(str(asset_path("vtest.avi")))
    frames = []
    for _ in range(count):
        ok, bgr = capture.read()
        assert ok
        frames.append(np.ascontiguousarray(bgr[::4, ::4, ::-1]))  # 192x144 RGB
    capture.release()
    return frames


def _write_colour_bag(path: Path, images: Sequence[np.ndarray],
                      topics: Sequence[str] = ("/cam/color/image_raw",)) -> None:
    stamps = [5_000_000_000 + i * 100_000_000 for i in range(len(images))]  # 10 Hz
    write_image_bag(path, [(topic, stamp, rgb, "rgb8") for rgb, stamp in zip(images, stamps)
                           for topic in topics])


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "street"
    _write_colour_bag(path, _vtest(6))
    return path


def test_colour_bag_plays_back_exactly_at_its_rate(bag):
    frames = _vtest(6)
    source = BagColourSource(str(bag))
    assert is_bag(str(bag)) and source.topic == "/cam/color/image_raw"
    assert len(source) == 6 and (source.width, source.height) == (192, 144)
    assert source.fps == pytest.approx(10.0)
    for expected in frames:
        np.testing.assert_array_equal(source.read(), expected)
    assert source.read() is None
    source.rewind()
    np.testing.assert_array_equal(source.read(), frames[0])


def test_colour_bag_topic_choice_and_bad_input(tmp_path):
    two = tmp_path / "two"
    _write_colour_bag(two, _vtest(2), topics=("/left/image_raw", "/right/image_raw"))
    with pytest.raises(ConfigError, match="several image topics"):
        BagColourSource(str(two))
    assert BagColourSource(str(two), "/right/image_raw").topic == "/right/image_raw"
    assert BagColourSource(f"{two}#/left/image_raw").topic == "/left/image_raw"
    with pytest.raises(ConfigError, match="has no topic '/nope'"):
        BagColourSource(str(two), "/nope")
    with pytest.raises(ConfigError, match="does not exist"):
        BagColourSource(str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


def test_video_camera_plays_a_colour_only_bag_into_the_node(ros, bag):
    remaps = {"camera/color/image_raw": "/bagcam/rgb", "camera/depth/image_raw": "/bagcam/depth",
              "camera/color/camera_info": "/bagcam/info"}
    probe = Probe("bag_colour_probe")
    probe.listen(Image, "/bagcam/rgb")
    probe.listen(Image, "/bagcam/depth")
    probe.listen(Float32MultiArray, "/vision/features")
    params = {"backbone": "realtime", "output_dim": 16, "input_size": [64, 64]}
    with running("video_camera", params={"source": str(bag)}, remaps=remaps) as camera, \
            running("vision_node", params=params, remaps=remaps) as node:
        assert probe.spin_until(lambda: len(probe.received["/vision/features"]) >= 5, 120), \
            camera.log() + node.log()
        assert "10 Hz" in camera.log()
    rgb = probe.received["/bagcam/rgb"][-1]
    assert (rgb.width, rgb.height, rgb.encoding) == (192, 144, "rgb8")
    assert not probe.received["/bagcam/depth"]  # colour only: no depth published
    probe.destroy_node()
