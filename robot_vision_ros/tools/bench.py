"""``python -m robot_vision_ros.tools.bench``: end-to-end benchmark of the node.

The implementation talks ROS, so it lives in ``robot_vision_ros.ros.bench``;
this module is the command-line front (``--help`` lists the options).
``--compare-compression [OPTIONS]`` runs the compression report instead
(``tools.compare_compression``: parameters, size, latency, throughput and
fidelity per mode), with the options that follow it.
"""
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--compare-compression" in args:
        from .compare_compression import main as compare
        args.remove("--compare-compression")
        return compare(args)
    from ..ros.bench import main as bench
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
