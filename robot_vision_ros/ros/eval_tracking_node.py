"""``python -m robot_vision_ros.ros.eval_tracking_node``: the real node on a real video.

Runs ``video_camera`` (the video, once, at ``--rate``) and ``vision_node``
(ONNX person detector, no depth, a tiny encoder, ``target_fps`` = the rate)
as separate processes over Fast DDS, records every ``/vision/detections``
message, and compares the node's tracks with the reference ByteTrack of the
``trackers`` package run offline on the same frames.

Frame alignment: this process also subscribes to the camera's image topic and
identifies each published image by a digest of its pixels, matched against
the digests of the decoded video (:func:`~robot_vision_ros.tools.eval_tracking.frame_digest`):
that maps header stamp -> video frame index exactly, whatever frames
discovery or the node's frame skipping lost. A detections message carries the
header (stamp) of its source frame, so it maps to the frame index through
that table. A stamp whose image this process missed falls back to
``nearest known stamp + round(dt * rate)`` (video_camera publishes one frame
per timer tick); the report counts both kinds.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2

from ..core.errors import VisionError
from ..tools.eval_tracking import (FrameBoxes, compare_on_frames, detect_video, frame_digest,
                                   format_comparison, identity_agreement, reference_parameters,
                                   resolve_asset, track_stats, write_json)
from ..tracking import TrackerConfig
from . import processes
from .conversions import image_msg_to_rgb, stamp_to_ns
from .outputs import pointcloud2_to_object_rows
from .spin import spin_until

IMAGE_TOPIC = "/eval_tracking/rgb"
REMAPS = {"camera/color/image_raw": IMAGE_TOPIC,
          "camera/color/camera_info": "/eval_tracking/camera_info",
          "camera/depth/image_raw": "/eval_tracking/depth"}
DETECTIONS_TOPIC = "/vision/detections"


class Recorder(Node):
    """Records the digest of every camera image and every detections table, by stamp."""

    def __init__(self) -> None:
        super().__init__("eval_tracking_recorder")
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.image_digests: Dict[int, str] = {}
        self.detections: Dict[int, np.ndarray] = {}
        self.last_image_s: Optional[float] = None
        self.create_subscription(Image, IMAGE_TOPIC, self._on_image, qos)
        self.create_subscription(PointCloud2, DETECTIONS_TOPIC, self._on_detections, qos)

    def _on_image(self, msg: Image) -> None:
        self.image_digests[stamp_to_ns(msg.header.stamp)] = frame_digest(image_msg_to_rgb(msg))
        self.last_image_s = time.monotonic()

    def _on_detections(self, msg: PointCloud2) -> None:
        self.detections[stamp_to_ns(msg.header.stamp)] = pointcloud2_to_object_rows(msg)

    def spin_until(self, condition, timeout_s: float) -> bool:
        return spin_until(self, condition, timeout_s)


def align_stamps(stamps_ns: Sequence[int], image_digests: Dict[int, str],
                 frame_index_of_digest: Dict[str, int], rate_hz: float) -> Dict[str, Any]:
    """Video frame index of each stamp: exact by image digest, else by timer arithmetic.

    Returns ``{"index": {stamp_ns: frame}, "by_digest": n, "by_stamp": n,
    "unaligned": n}``.
    """
    known = {s: frame_index_of_digest[d] for s, d in image_digests.items()
             if d in frame_index_of_digest}
    known_stamps = np.array(sorted(known), dtype=np.int64)
    index: Dict[int, int] = {}
    by_digest = by_stamp = unaligned = 0
    for stamp in stamps_ns:
        if stamp in known:
            index[stamp] = known[stamp]
            by_digest += 1
        elif len(known_stamps):
            nearest = int(known_stamps[np.argmin(np.abs(known_stamps - stamp))])
            index[stamp] = known[nearest] + int(round((stamp - nearest) * 1e-9 * rate_hz))
            by_stamp += 1
        else:
            unaligned += 1
    return {"index": index, "by_digest": by_digest, "by_stamp": by_stamp,
            "unaligned": unaligned}


def rows_to_frame(rows: np.ndarray) -> FrameBoxes:
    boxes = np.stack((rows["u1"], rows["v1"], rows["u2"], rows["v2"]), axis=1) if len(rows) \
        else np.zeros((0, 4))
    return FrameBoxes(rows["track_id"].astype(np.int64), boxes)


def run_node(video: str, model: str, rate_hz: float, seconds: float, score: float,
             startup_timeout_s: float = 120.0) -> Dict[str, Any]:
    """Start the node and the camera, record until the video ends or ``seconds`` pass."""
    params = {"backbone": "realtime", "input_size": [64, 64], "output_dim": 16,
              "target_fps": float(rate_hz), "depth.model": "none", "detection.model": "onnx",
              "detection.weights": video_model_path(model),
              "detection.score_threshold": float(score)}
    logs = {name: tempfile.NamedTemporaryFile("w+", prefix=f"eval_{name}_", suffix=".log")
            for name in ("vision_node", "video_camera")}
    rclpy.init()
    recorder = Recorder()
    node = camera = None
    try:
        node = processes.start("vision_node", params=params, remaps=REMAPS,
                               stdout=logs["vision_node"])
        # The node is ready when its detections publisher and image subscription exist.
        ready = recorder.spin_until(
            lambda: recorder.count_publishers(DETECTIONS_TOPIC) > 0
            and recorder.count_subscribers(IMAGE_TOPIC) >= 2 or node.poll() is not None,
            startup_timeout_s)
        if not ready or node.poll() is not None:
            raise RuntimeError("vision_node did not come up:\n" + _tail(logs["vision_node"]))
        camera = processes.start("video_camera",
                                 params={"source": video, "rate_hz": float(rate_hz),
                                         "loop": False},
                                 remaps=REMAPS, stdout=logs["video_camera"])
        started = time.monotonic()
        recorder.spin_until(lambda: bool(recorder.image_digests), 30.0)

        def finished() -> bool:
            quiet = (recorder.last_image_s is not None
                     and time.monotonic() - recorder.last_image_s > 3.0)
            return quiet or time.monotonic() - started > seconds

        recorder.spin_until(finished, seconds + 60.0)
        recorder.spin_until(lambda: False, 1.0)  # the node's last frames
    finally:
        for proc in (camera, node):
            if proc is not None:
                processes.stop(proc)
        node_log = _tail(logs["vision_node"], 4000)
        recorder.destroy_node()
        rclpy.try_shutdown()
        for log in logs.values():
            log.close()
    accounting = [line for line in node_log.splitlines() if "frame accounting" in line]
    return {"image_digests": dict(recorder.image_digests),
            "detections": dict(recorder.detections), "params": params,
            "frame_accounting": accounting[-1] if accounting else ""}


def video_model_path(model: str) -> str:
    return str(resolve_asset(model))


def _tail(log: Any, chars: int = 3000) -> str:
    log.flush()
    with open(log.name) as f:
        return f.read()[-chars:]


def evaluate_node(video: str, model: str, rate_hz: float = 10.0, seconds: float = 70.0,
                  score: float = 0.3) -> Dict[str, Any]:
    """The node's recorded tracks vs the reference ByteTrack (and our tracker)
    run offline on the same frames with the same stamps."""
    video_path = str(resolve_asset(video))
    offline = detect_video(video_path, model, score)
    digest_index: Dict[str, int] = {}
    for i, digest in enumerate(offline.frame_digests):
        digest_index.setdefault(digest, i)  # a repeated frame maps to its first copy
    recorded = run_node(video_path, model, rate_hz, seconds, score)
    alignment = align_stamps(sorted(recorded["detections"]), recorded["image_digests"],
                             digest_index, rate_hz)
    pairs = sorted((frame, stamp) for stamp, frame in alignment["index"].items()
                   if 0 <= frame < len(offline.detections))
    if not pairs:
        raise RuntimeError("the node published no detections that could be aligned to frames")
    frames = [f for f, _ in pairs]
    stamps_s = [(s - pairs[0][1]) * 1e-9 for _, s in pairs]
    node_frames = [rows_to_frame(recorded["detections"][s]) for _, s in pairs]
    detections = [offline.detections[f] for f in frames]
    # The node's tracker: tracking.* defaults with frame_rate_hz = target_fps.
    config = TrackerConfig(frame_rate_hz=rate_hz)
    offline_result = compare_on_frames(detections, stamps_s, config)
    ours_offline, reference = offline_result.pop("_frames")
    return {"video": video, "model": model, "rate_hz": rate_hz, "score_threshold": score,
            "video_frames": len(offline.detections),
            "images_recorded": len(recorded["image_digests"]),
            "detection_messages": len(recorded["detections"]),
            "aligned_by_digest": alignment["by_digest"],
            "aligned_by_stamp": alignment["by_stamp"], "unaligned": alignment["unaligned"],
            "first_frame": frames[0], "last_frame": frames[-1],
            "frames_compared": len(frames), "frames_missing_in_range":
                frames[-1] - frames[0] + 1 - len(frames),
            "detections_per_frame": offline_result["detections_per_frame"],
            "ours": track_stats(node_frames),
            "reference_bytetrack": offline_result["reference_bytetrack"],
            "agreement": identity_agreement(node_frames, reference),
            "offline_ours": offline_result["ours"],
            "node_vs_offline_ours": identity_agreement(node_frames, ours_offline),
            "node_params": recorded["params"], "frame_accounting": recorded["frame_accounting"],
            "reference_parameters": reference_parameters("bytetrack", config)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m robot_vision_ros.ros.eval_tracking_node",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", default="vtest.avi")
    parser.add_argument("--model", default="ssdlite_person.onnx")
    parser.add_argument("--rate", type=float, default=10.0, help="camera rate and target_fps")
    parser.add_argument("--seconds", type=float, default=70.0,
                        help="longest recording; it stops earlier when the video ends")
    parser.add_argument("--score", type=float, default=0.3, help="detection.score_threshold")
    parser.add_argument("--json")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # Keep this run off other people's DDS traffic unless the caller chose a domain.
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    try:
        result = evaluate_node(args.video, args.model, args.rate, args.seconds, args.score)
    except (VisionError, RuntimeError) as exc:
        print(f"eval_tracking_node: {exc}", file=sys.stderr)
        return 2
    print(f"{result['video']} at {result['rate_hz']:g} Hz: {result['images_recorded']} images "
          f"seen, {result['detection_messages']} detection messages; aligned "
          f"{result['aligned_by_digest']} by image digest, {result['aligned_by_stamp']} by "
          f"stamp, {result['unaligned']} unaligned; frames {result['first_frame']}.."
          f"{result['last_frame']} ({result['frames_missing_in_range']} not processed)")
    if result["frame_accounting"]:
        print("node " + result["frame_accounting"].strip())
    print(format_comparison(result, ours_label="node"))
    agreement = result["node_vs_offline_ours"]
    print(f"node vs our tracker offline on the same frames: "
          f"{agreement['ours_switched']} switched, {agreement['reference_fragmented']} "
          f"fragmented, matched {agreement['matched_fraction_ours']:.3f}")
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
