"""robot_vision_ros: real-time RGB-D perception for VLA policies."""

__version__ = "0.1.0"
