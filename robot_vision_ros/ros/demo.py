"""``make demo``: the node on the built-in simulated camera, then what it achieved.

Starts ``sim_camera`` (or ``video_camera`` with ``--video``) and ``vision_node``
as separate processes (as a robot would run them), listens to the node's
outputs for a while, stops both, prints rates, latency, depth and detection
figures and the node's own frame accounting, and writes a picture of one
frame (input, depth, detections, ViT attention side by side) to
``build/demo.png``.
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
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Float32MultiArray

from ..core.image_codec import decode_color, decode_depth
from ..core.render import side_by_side
from . import processes
from .conversions import pointcloud2_to_feature_table, stamp_to_ns
from .outputs import pointcloud2_to_object_rows
from .qos import keep_last
from .spin import spin_for

IMAGES = {"input": "/demo/rgb", "depth": "/vision/depth/colored",
          "detections": "/vision/detections/image", "attention": "/vision/attention/image"}
REMAPS = {"camera/color/image_raw": "/demo/rgb", "camera/depth/image_raw": "/demo/depth",
          "camera/color/camera_info": "/demo/info"}


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
        self.images: Dict[str, Image] = {}
        self.depth_valid: List[float] = []
        self.objects: List[int] = []
        self.track_ids: set = set()
        for name, topic in IMAGES.items():
            self.create_subscription(Image, topic, lambda m, n=name: self.images.__setitem__(n, m),
                                     keep_last("best_effort", 1))
        self.create_subscription(Image, "/vision/depth", self._on_depth, keep_last("reliable", 2))
        self.create_subscription(PointCloud2, "/vision/detections", self._on_objects, qos)
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

    def _on_depth(self, msg: Image) -> None:
        depth = decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                             msg.data)
        self.depth_valid.append(float(np.isfinite(depth).mean()))

    def _on_objects(self, msg: PointCloud2) -> None:
        rows = pointcloud2_to_object_rows(msg)
        self.objects.append(len(rows))
        self.track_ids.update(int(i) for i in rows["track_id"])

    def picture(self) -> Optional[np.ndarray]:
        """The newest input, depth, detection and attention images side by side."""
        panels = [decode_color(m.encoding, m.height, m.width, m.step, m.is_bigendian, m.data)
                  for name, m in sorted(self.images.items(), key=lambda kv: list(IMAGES).index(
                      kv[0]))]
        return side_by_side(panels, 360) if panels else None

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("vision"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics["level"] = str(int.from_bytes(status.level, "little")
                                                if isinstance(status.level, bytes)
                                                else status.level)
                self.diagnostics["message"] = status.message


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to measure")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    parser.add_argument("--video", default="", help="a video file instead of the sim camera")
    parser.add_argument("--detector", default="",
                        help="an ONNX detector (e.g. ../shared/assets/ssdlite_person.onnx)")
    parser.add_argument("--picture", default="build/demo.png", help="where to write the picture")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="extra node parameter (YAML value), repeatable")
    args = parser.parse_args(argv)

    import yaml
    params = {"backbone": args.backbone, "target_fps": args.rate}
    if args.video:
        params["depth.model"] = "none"  # a video has no depth camera
    if args.detector:
        params.update({"detection.model": "onnx", "detection.weights": args.detector})
    for item in args.set:
        name, _, value = item.partition("=")
        params[name] = yaml.safe_load(value)
    logs = tempfile.NamedTemporaryFile("w+", prefix="vision_node_", suffix=".log", delete=False)
    if args.video:
        camera = processes.start("video_camera", params={"source": args.video,
                                                         "rate_hz": args.rate}, remaps=REMAPS)
    else:
        camera = processes.start("sim_camera", params={"rate_hz": args.rate}, remaps=REMAPS)
    vision = processes.start("vision_node", params=params, remaps=REMAPS, stdout=logs)
    rclpy.init()
    monitor = Monitor()
    try:
        source = args.video or "sim_camera (640x480 RGB-D)"
        print(f"demo: {source} at {args.rate:g} Hz -> vision_node ({args.backbone}); "
              f"waiting for the model to load...", flush=True)
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
        monitor.objects.clear()
        print(f"demo: features arriving; measuring for {args.seconds:g} s", flush=True)
        spin_for(monitor, args.seconds)
        picture = monitor.picture()
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
    if monitor.depth_valid:
        print(f"/vision/depth       {len(monitor.depth_valid)} images, known pixels "
              f"{100 * np.mean(monitor.depth_valid):.1f}%")
    if monitor.objects:
        print(f"/vision/detections  {len(monitor.objects)} tables, {np.mean(monitor.objects):.1f} "
              f"objects per frame, {len(monitor.track_ids)} track ids")
    if d:
        print(f"node accounting     received {d.get('received', '?')}, processed "
              f"{d.get('processed', '?')}, skipped {d.get('skipped_total', '?')} "
              f"(rate {d.get('skipped_rate', '0')}, busy {d.get('skipped_busy', '0')})")
        print(f"node processing     p50 {d.get('processing_ms_p50', '?')} ms, "
              f"p99 {d.get('processing_ms_p99', '?')} ms; status: {d.get('message', '?')}")
    if picture is not None:
        import os

        import cv2
        os.makedirs(os.path.dirname(args.picture) or ".", exist_ok=True)
        cv2.imwrite(args.picture, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        shown = " | ".join(sorted(monitor.images, key=list(IMAGES).index))
        print(f"picture             {args.picture} ({shown})")
    logs.seek(0)
    tail = [line for line in logs.read().splitlines() if "frame accounting" in line]
    if tail:
        print("node shutdown log   " + tail[-1].split("]: ", 1)[-1])
    return 0 if monitor.features or rate > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
