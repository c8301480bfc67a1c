"""Test-side ROS helpers: a probe node that records topics, and waiting utilities.

Real rclpy and Fast DDS: the node under test runs in its own process and the
probe talks to it over DDS exactly as a policy node would.
"""
from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from robot_vision_ros.ros import processes
from robot_vision_ros.ros.spin import spin_for, spin_until


class Probe(Node):
    """Subscribes to topics and keeps (receipt time, message) pairs."""

    def __init__(self, name: str = "test_probe") -> None:
        super().__init__(name)
        self.received: Dict[str, List[Any]] = {}
        self.times: Dict[str, List[float]] = {}

    def listen(self, msg_type: Any, topic: str, reliable: bool = True, depth: int = 50) -> None:
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        self.received[topic], self.times[topic] = [], []

        def callback(msg: Any, topic: str = topic) -> None:
            self.received[topic].append(msg)
            self.times[topic].append(time.monotonic())

        self.create_subscription(msg_type, topic, callback, qos)

    def spin_until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        return spin_until(self, condition, timeout_s)

    def spin_for(self, seconds: float) -> None:
        spin_for(self, seconds)

    def clear(self) -> None:
        for topic in self.received:
            self.received[topic].clear()
            self.times[topic].clear()

    def diagnostics(self) -> Dict[str, str]:
        """Key/values of the newest vision status on /diagnostics."""
        for msg in reversed(self.received.get("/diagnostics", [])):
            for status in msg.status:
                if status.name.startswith("vision"):
                    values = {kv.key: kv.value for kv in status.values}
                    values["message"] = status.message
                    return values
        return {}


@contextlib.contextmanager
def running(name: str, **kwargs: Any) -> Iterator[subprocess.Popen]:
    """Run one of the package's executables for the duration of a ``with`` block.

    Its output goes to a temporary file, available as ``proc.log()``.
    """
    log = tempfile.NamedTemporaryFile("w+", prefix=f"{name}_", suffix=".log")
    proc = processes.start(name, stdout=log, **kwargs)
    proc.log = lambda: (log.flush(), open(log.name).read())[1]  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        processes.stop(proc)
        log.close()


def wait_for_log(proc: subprocess.Popen, text: str, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if text in proc.log():
            return True
        if proc.poll() is not None:
            return text in proc.log()
        time.sleep(0.1)
    return False


def listen_diagnostics(probe: Probe) -> None:
    probe.listen(DiagnosticArray, "/diagnostics")


def shutdown(probe: Optional[Probe]) -> None:
    if probe is not None:
        probe.destroy_node()
