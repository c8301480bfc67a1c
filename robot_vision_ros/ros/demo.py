"""``make demo``: the node on the built-in simulated camera, then what it achieved.

Starts ``sim_camera`` and ``vision_node`` as separate processes (as a robot
would run them), listens to ``/vision/features``, ``/vision/features/tokens``
and ``/diagnostics`` for a while, stops both, and prints rates, latency and
the node's own frame accounting.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float32MultiArray

from . import processes
from .conversions import pointcloud2_to_feature_table, stamp_to_ns
from .qos import keep_last


class Monitor(Node):
    """Collects what the vision node publishes, with receipt times."""

    def __init__(self) -> None:
        super().__init__("vision_demo_monitor")
        qos = keep_last("reliable", 10)
        self.features: List[np.ndarray] = []
        self.feature_times: List[float] = []
        self.token_ages_ms: List[float] = []
        self.token_rows: List[int] = []
        self.diagnostics: Dict[str, str] = {}
        self.create_subscription(Float32MultiArray, "/vision/features", self._on_features, qos)
        self.create_subscription(PointCloud2, "/vision/features/tokens", self._on_tokens, qos)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, qos)

    def _on_features(self, msg: Float32MultiArray) -> None:
        self.features.append(np.asarray(msg.data, dtype=np.float32))
        self.feature_times.append(time.monotonic())

    def _on_tokens(self, msg: PointCloud2) -> None:
        now = self.get_clock().now().nanoseconds
        self.token_ages_ms.append((now - stamp_to_ns(msg.header.stamp)) / 1e6)
        features, _, _ = pointcloud2_to_feature_table(msg)
        self.token_rows.append(len(features))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("vision"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics["level"] = str(int.from_bytes(status.level, "little")
                                                if isinstance(status.level, bytes)
                                                else status.level)
                self.diagnostics["message"] = status.message


def _spin_for(node: Node, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to measure")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    args = parser.parse_args(argv)

    logs = tempfile.NamedTemporaryFile("w+", prefix="vision_node_", suffix=".log", delete=False)
    camera = processes.start("sim_camera", params={"rate_hz": args.rate})
    vision = processes.start("vision_node", params={"backbone": args.backbone},
                             stdout=logs)
    rclpy.init()
    monitor = Monitor()
    try:
        print(f"demo: sim_camera (640x480 RGB-D at {args.rate:g} Hz) -> vision_node "
              f"({args.backbone}); waiting for the model to load...", flush=True)
        deadline = time.monotonic() + 120
        while not monitor.features and time.monotonic() < deadline:
            if vision.poll() is not None:
                break
            rclpy.spin_once(monitor, timeout_sec=0.1)
        if not monitor.features:
            logs.seek(0)
            print("demo: the vision node published nothing; its log:\n" + logs.read(),
                  file=sys.stderr)
            return 1
        monitor.features.clear()
        monitor.feature_times.clear()
        monitor.token_ages_ms.clear()
        print(f"demo: features arriving; measuring for {args.seconds:g} s", flush=True)
        _spin_for(monitor, args.seconds)
    finally:
        processes.stop(vision)
        processes.stop(camera)
        monitor.destroy_node()
        rclpy.try_shutdown()

    times = np.array(monitor.feature_times)
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    ages = np.array(monitor.token_ages_ms) if monitor.token_ages_ms else np.array([np.nan])
    dims = {len(f) for f in monitor.features}
    feats = np.stack(monitor.features) if monitor.features else np.zeros((0, 1))
    d = monitor.diagnostics
    print("\n=== robot_vision_ros demo ===")
    print(f"backbone            {args.backbone}")
    print(f"/vision/features    {len(monitor.features)} messages, {rate:.1f} Hz, "
          f"length {sorted(dims)}, finite {bool(np.isfinite(feats).all())}")
    print(f"/vision/features/tokens  rows per message {sorted(set(monitor.token_rows))[:3]}, "
          f"age p50 {np.nanpercentile(ages, 50):.1f} ms, p99 {np.nanpercentile(ages, 99):.1f} ms")
    if d:
        print(f"node accounting     received {d.get('received', '?')}, processed "
              f"{d.get('processed', '?')}, skipped {d.get('skipped_total', '?')} "
              f"(rate {d.get('skipped_rate', '0')}, busy {d.get('skipped_busy', '0')})")
        print(f"node processing     p50 {d.get('processing_ms_p50', '?')} ms, "
              f"p99 {d.get('processing_ms_p99', '?')} ms; status: {d.get('message', '?')}")
    logs.seek(0)
    tail = [line for line in logs.read().splitlines() if "frame accounting" in line]
    if tail:
        print("node shutdown log   " + tail[-1].split("]: ", 1)[-1])
    return 0 if monitor.features or rate > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
