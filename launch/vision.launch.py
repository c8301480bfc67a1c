"""Launch the vision node (and, with source:=sim, the simulated RGB-D camera).

    ros2 launch robot_vision_ros vision.launch.py backbone:=efficientnet_b0 device:=cuda \
        rgb_topic:=/camera/camera/color/image_raw depth_topic:=/camera/camera/aligned_depth_to_color/image_raw \
        camera_info_topic:=/camera/camera/color/camera_info
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

SHARE = get_package_share_directory("robot_vision_ros")
ARGS = {
    "params_file": (os.path.join(SHARE, "config", "vision.yaml"), "node parameters (YAML)"),
    "fastdds_profile": (os.path.join(SHARE, "config", "fastdds_large_data.xml"),
                        "Fast DDS profile with a shared-memory segment large enough for VGA"),
    "backbone": ("", "override the encoder (empty: keep the params file's)"),
    "device": ("", "override the device: auto, cpu, cuda, cuda:N (empty: params file)"),
    "namespace": ("", "namespace of the node (topics become /NS/vision/...)"),
    "rgb_topic": ("camera/color/image_raw", "colour image input"),
    "depth_topic": ("camera/depth/image_raw", "aligned depth input (16UC1 mm or 32FC1 m)"),
    "camera_info_topic": ("camera/color/camera_info", "camera info of the colour image"),
    "use_sim_time": ("false", "use /clock (bags, simulators)"),
    "source": ("none", "sim: also start the built-in simulated RGB-D camera"),
}


def _vision_node(context):
    overrides = {key: LaunchConfiguration(key).perform(context) for key in ("backbone", "device")}
    params = [LaunchConfiguration("params_file"),
              {k: v for k, v in overrides.items() if v},
              {"use_sim_time": LaunchConfiguration("use_sim_time").perform(context) == "true"}]
    remaps = [("camera/color/image_raw", LaunchConfiguration("rgb_topic")),
              ("camera/depth/image_raw", LaunchConfiguration("depth_topic")),
              ("camera/color/camera_info", LaunchConfiguration("camera_info_topic"))]
    return [Node(package="robot_vision_ros", executable="vision_node", name="vision",
                 namespace=LaunchConfiguration("namespace"), parameters=params,
                 remappings=remaps, output="screen", emulate_tty=True)]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text)
         for name, (default, text) in ARGS.items()]
        + [SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                  LaunchConfiguration("fastdds_profile")),
           Node(package="robot_vision_ros", executable="sim_camera", name="sim_camera",
                namespace=LaunchConfiguration("namespace"), output="screen",
                remappings=[("camera/color/image_raw", LaunchConfiguration("rgb_topic")),
                            ("camera/depth/image_raw", LaunchConfiguration("depth_topic")),
                            ("camera/color/camera_info",
                             LaunchConfiguration("camera_info_topic"))],
                condition=IfCondition(PythonExpression(
                    ["'", LaunchConfiguration("source"), "' == 'sim'"]))),
           OpaqueFunction(function=_vision_node)])
