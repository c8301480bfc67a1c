"""Command-line tools: ``python -m robot_vision_ros.tools.NAME``."""
