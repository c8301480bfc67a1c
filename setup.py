"""ament_python set-up: console scripts go to lib/robot_vision_ros so `ros2 run` finds them."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "robot_vision_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")
         + glob("config/*.perspective")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="robot_vision_ros developers",
    maintainer_email="robot-vision@example.org",
    description="Real-time RGB-D perception node (features, depth, tracked detections) for VLA policies.",
    license="Apache-2.0",
    extras_require={"test": ["pytest"]},
    entry_points={
        "console_scripts": [
            f"vision_node = {PACKAGE}.ros.vision_node:main",
            f"sim_camera = {PACKAGE}.ros.sim_camera:main",
            f"video_camera = {PACKAGE}.ros.video_camera:main",
        ],
    },
)
