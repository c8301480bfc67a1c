"""The colcon-installed package: executables, launch file, params and DDS profile."""
import importlib.util
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _share() -> Path:
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    try:
        return Path(get_package_share_directory("robot_vision_ros"))
    except PackageNotFoundError:
        pytest.fail("robot_vision_ros is not installed: run `make test` (colcon build + "
                    "install/setup.sh) rather than bare pytest")


def test_package_xml_is_format_3_with_real_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    deps = {e.text for e in root if e.tag.endswith("depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs"} <= deps
    assert root.find("export/build_type").text == "ament_python"


def test_executables_installed_where_ros2_run_looks():
    prefix = _share().parents[1]
    for name in ("vision_node", "sim_camera", "video_camera"):
        exe = prefix / "lib" / "robot_vision_ros" / name
        assert exe.is_file() and os.access(exe, os.X_OK), exe


def test_launch_file_and_what_it_points_at_are_installed():
    share = _share()
    launch = share / "launch" / "vision.launch.py"
    assert launch.is_file()
    text = launch.read_text()
    for rel in ("config/vision.yaml", "config/fastdds_large_data.xml"):
        assert (share / rel).is_file(), rel
        assert rel.split("/")[1] in text.replace('", "', "/")
    ET.parse(share / "config" / "fastdds_large_data.xml")  # well-formed XML


def test_launch_description_builds_when_launch_ros_is_available():
    if importlib.util.find_spec("launch_ros") is None:
        pytest.skip("launch_ros is not installable from PyPI; with a system ROS 2 this "
                    "test builds the launch description")
    spec = importlib.util.spec_from_file_location("vision_launch",
                                                  _share() / "launch" / "vision.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {a.name for a in description.get_launch_arguments()}
    assert {"backbone", "device", "namespace", "rgb_topic", "depth_topic", "use_sim_time",
            "params_file"} <= names


def test_rqt_perspective_opens_depth_and_detection_views():
    import ast
    import json
    doc = json.loads((_share() / "config" / "vision.perspective").read_text())
    manager = doc["groups"]["pluginmanager"]
    running = ast.literal_eval(manager["keys"]["running-plugins"]["repr"])
    assert running == {"rqt_image_view/ImageView": [1, 2]}
    topics = {ast.literal_eval(g["groups"]["plugin"]["keys"]["topic"]["repr"])
              for g in manager["groups"].values()}
    assert topics == {"/vision/depth/colored", "/vision/detections/image"}


@pytest.mark.parametrize("name,params,text", [
    ("video_camera", {"source": "/no/such/video.avi"}, "neither a file, a folder nor"),
    ("video_camera", {}, "parameter 'source' is empty"),
    ("sim_camera", {"depth_encoding": "rgb8"}, "depth_encoding must be 16UC1 or 32FC1"),
])
def test_camera_executables_refuse_bad_parameters_with_the_reason(name, params, text):
    import subprocess

    from robot_vision_ros.ros import processes
    proc = processes.start(name, params=params, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and text in out, out
