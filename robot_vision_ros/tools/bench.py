"""``python -m robot_vision_ros.tools.bench``: end-to-end benchmark of the node.

The implementation talks ROS, so it lives in ``robot_vision_ros.ros.bench``;
this module is the command-line front (``--help`` lists the options).
"""
import sys

from ..ros.bench import main

if __name__ == "__main__":
    sys.exit(main())
