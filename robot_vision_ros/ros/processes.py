"""Start the package's executables as separate processes (demo, benchmarks, tests).

Uses the console scripts that colcon installed in ``lib/robot_vision_ros``
(what ``ros2 run`` would start), or ``python -m`` when the package is not
installed with colcon.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

_MODULES = {"vision_node": "robot_vision_ros.ros.vision_node",
            "sim_camera": "robot_vision_ros.ros.sim_camera",
            "video_camera": "robot_vision_ros.ros.video_camera"}


def spin_main(node_factory: Callable[[], Any], name: str,
              args: Optional[List[str]] = None) -> int:
    """``main`` of a simple node executable: build, spin until Ctrl-C, clean up.

    A ConfigError or InputError from the constructor (a bad parameter, a
    missing file) is printed and gives exit code 2 instead of a traceback.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from ..core.errors import ConfigError, InputError

    rclpy.init(args=args)
    try:
        node = node_factory()
    except (ConfigError, InputError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def executable(name: str) -> List[str]:
    """Command that runs executable ``name`` of this package."""
    if name not in _MODULES:
        raise ValueError(f"unknown executable '{name}'; known: {', '.join(_MODULES)}")
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
        try:
            path = Path(get_package_prefix("robot_vision_ros")) / "lib" / "robot_vision_ros" / name
            if path.is_file() and os.access(path, os.X_OK):
                return [str(path)]
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    return [sys.executable, "-m", _MODULES[name]]


def _param_arg(name: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = "[" + ",".join(str(v) for v in value) + "]"
    elif isinstance(value, str):
        text = value if value else "''"
    else:
        text = repr(value)
    return f"{name}:={text}"


def ros_args(params: Optional[Mapping[str, Any]] = None,
             params_file: Optional[str] = None,
             remaps: Optional[Mapping[str, str]] = None,
             namespace: Optional[str] = None) -> List[str]:
    """``--ros-args`` for parameters, a params file, remappings and a namespace."""
    args = ["--ros-args"]
    if params_file:
        args += ["--params-file", params_file]
    for name, value in (params or {}).items():
        args += ["-p", _param_arg(name, value)]
    for src, dst in (remaps or {}).items():
        args += ["-r", f"{src}:={dst}"]
    if namespace:
        args += ["-r", f"__ns:={namespace}"]
    return args


def start(name: str, params: Optional[Mapping[str, Any]] = None,
          params_file: Optional[str] = None, remaps: Optional[Mapping[str, str]] = None,
          namespace: Optional[str] = None, env: Optional[Dict[str, str]] = None,
          stdout: Any = None, extra: Sequence[str] = ()) -> subprocess.Popen:
    """Start executable ``name`` with ROS arguments; the environment is inherited."""
    cmd = executable(name) + list(extra) + ros_args(params, params_file, remaps, namespace)
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen(cmd, env=full_env, stdout=stdout,
                            stderr=subprocess.STDOUT if stdout is not None else None,
                            text=True, start_new_session=True)


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """SIGINT (clean shutdown, logs the frame accounting), then kill if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode
