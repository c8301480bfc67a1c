"""``make demo``: the node on the built-in simulated camera, then what it achieved.

Starts ``sim_camera`` (or ``video_camera`` with ``--video``) and ``vision_node``
as separate processes (as a robot would run them), listens to the node's
outputs for a while, stops both, prints rates, latency, depth and detection
figures and the node's own frame accounting, and writes a picture of one
frame (input, estimated depth, tracked detections, ViT attention side by
side, all of the same stamp) to ``build/demo.png``.

On the sim camera the node runs the ``sensor`` depth with
``depth.fill_holes: nearest`` and the ``tabletop`` detector (objects on the
table, from depth) with its tracker. The camera's depth has holes
(``--depth-holes``, like a real depth camera) while its ground truth
(``camera/ground_truth/*``) stays exact; ``/vision/depth`` and
``/vision/detections`` are matched to the ground truth by header stamp and
scored: depth AbsRel / RMSE on all pixels and on the hole pixels, box recall /
precision at IoU 0.5, and how well track ids stick to the true objects.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Float32MultiArray

from ..core.detections import ObjectTable, Tracks
from ..core.errors import InputError
from ..core.ground_truth import depth_error
from ..core.image_codec import decode_color, decode_depth
from ..core.render import colorize_depth, draw_objects, side_by_side
from ..tracking.assignment import iou_matrix, linear_assignment
from . import processes
from .conversions import image_msg_to_depth_m, pointcloud2_to_feature_table, stamp_to_ns
from .ground_truth_msgs import pointcloud2_to_ground_truth_rows
from .outputs import pointcloud2_to_object_rows
from .qos import keep_last
from .spin import spin_for

PANEL_ORDER = ("input", "depth", "detections", "attention")
PANELS = {"input": "the camera's RGB",
          "depth": "/vision/depth colour-mapped (turbo: blue near, red far, black unknown)",
          "detections": "/vision/detections drawn on the RGB: box, class, score, #track id "
                        "and distance, one colour per track (dashed: predicted)",
          "attention": "/vision/attention/image, the ViT's CLS attention"}
RGB_TOPIC, ATTENTION_TOPIC = "/demo/rgb", "/vision/attention/image"
REMAPS = {"camera/color/image_raw": "/demo/rgb", "camera/depth/image_raw": "/demo/depth",
          "camera/color/camera_info": "/demo/info"}
TRUTH_REMAPS = {"camera/ground_truth/objects": "/demo/ground_truth/objects",
                "camera/ground_truth/depth": "/demo/ground_truth/depth"}
#: Score at most this many depth images a second: each costs a few ms of the
#: same 2 cores the node runs on.
DEPTH_SCORES_PER_S = 4.0
_KEEP_STAMPS = 60  # ground truth kept for matching: 2 s at 30 Hz
_KEEP_PANELS = 15  # newest depth images / object tables kept for the picture
#: A true box that moved less than this IoU since the object's last match jumped
#: (the sim camera restarted its loop): a new track id there is no id switch.
_JUMP_IOU = 0.3
#: Frames the sim camera pre-renders and replays in a loop.
SIM_LOOP_FRAMES = 90


class DepthScore:
    """AbsRel, RMSE and delta < 1.25 over many frames, pixel-weighted."""

    def __init__(self) -> None:
        self.n = self.considered = self.frames = 0
        self.abs_rel = self.sq = self.delta1 = 0.0

    def add(self, scores: Dict[str, float], considered: int) -> None:
        n = int(scores["n_pixels"])
        self.frames += 1
        self.considered += considered
        if n:
            self.n += n
            self.abs_rel += scores["abs_rel"] * n
            self.sq += scores["rmse_m"] ** 2 * n
            self.delta1 += scores["delta1"] * n

    def text(self) -> str:
        covered = self.n / self.considered if self.considered else math.nan
        if not self.n:
            return f"covered {100 * covered:.1f}% (no estimate on these pixels)"
        return (f"AbsRel {self.abs_rel / self.n:.4f}, RMSE {math.sqrt(self.sq / self.n):.3f} m, "
                f"delta<1.25 {100 * self.delta1 / self.n:.1f}%, covered {100 * covered:.1f}%")


class Monitor(Node):
    """Collects what the vision node publishes, with receipt times."""

    def __init__(self, rate_hz: float = 30.0) -> None:
        super().__init__("vision_demo_monitor")
        self.rate_hz = rate_hz
        qos = keep_last("reliable", 10)
        self.features: List[np.ndarray] = []
        self.feature_times: List[float] = []
        self.token_ages_ms: List[float] = []
        self.token_rows: List[int] = []
        self.diagnostics: Dict[str, str] = {}
        # Recent messages by stamp (ns), for a picture of one frame.
        self.rgb_msgs: "OrderedDict[int, Image]" = OrderedDict()
        self.attention_msgs: "OrderedDict[int, Image]" = OrderedDict()
        self.depth_maps: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self.object_tables: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self.depth_valid: List[float] = []
        self.objects: List[int] = []
        self.track_ids: set = set()
        # Ground truth by stamp (ns), and what was scored against it.
        self.truth_objects: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self.truth_depth: "OrderedDict[int, Image]" = OrderedDict()
        self.sensor_depth: "OrderedDict[int, Image]" = OrderedDict()
        self.depth_all, self.depth_holes = DepthScore(), DepthScore()
        self.depth_unmatched = 0
        self.depth_errors: List[str] = []
        self._last_depth_score = 0.0
        self.box_frames = self.box_matched = self.box_detected = self.box_truth = 0
        self.box_unmatched = 0
        self.truth_counts: List[int] = []
        self.truth_ids: set = set()
        self.id_switches = self.id_matches = 0
        self._last_match: Dict[int, tuple] = {}  # object id -> (track id, its true box)
        self.create_subscription(Image, RGB_TOPIC,
                                 lambda m: self._keep(self.rgb_msgs, m, m, _KEEP_STAMPS),
                                 keep_last("best_effort", 5))
        self.create_subscription(Image, ATTENTION_TOPIC,
                                 lambda m: self._keep(self.attention_msgs, m, m, _KEEP_PANELS),
                                 keep_last("best_effort", 1))
        self.create_subscription(Image, "/vision/depth", self._on_depth, keep_last("reliable", 2))
        self.create_subscription(PointCloud2, "/vision/detections", self._on_objects, qos)
        self.create_subscription(Float32MultiArray, "/vision/features", self._on_features, qos)
        self.create_subscription(PointCloud2, "/vision/features/tokens", self._on_tokens, qos)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, qos)

    def listen_to_truth(self) -> None:
        """Subscribe to the sim camera's ground truth and its (holed) depth."""
        qos = keep_last("reliable", 10)
        self.create_subscription(PointCloud2, TRUTH_REMAPS["camera/ground_truth/objects"],
                                 self._on_truth_objects, qos)
        self.create_subscription(Image, TRUTH_REMAPS["camera/ground_truth/depth"],
                                 lambda m: self._keep(self.truth_depth, m, m), qos)
        self.create_subscription(Image, REMAPS["camera/depth/image_raw"],
                                 lambda m: self._keep(self.sensor_depth, m, m), qos)

    @staticmethod
    def _keep(store: "OrderedDict[int, object]", msg: object, value: object,
              size: int = _KEEP_STAMPS) -> None:
        store[stamp_to_ns(msg.header.stamp)] = value
        while len(store) > size:
            store.popitem(last=False)

    def _on_truth_objects(self, msg: PointCloud2) -> None:
        rows = pointcloud2_to_ground_truth_rows(msg)
        self.truth_counts.append(len(rows))
        self.truth_ids.update(int(i) for i in rows["object_id"])
        self._keep(self.truth_objects, msg, rows)

    def _score_depth(self, msg: Image, estimate_m: np.ndarray) -> None:
        """Score one ``/vision/depth`` against the ground truth of its stamp."""
        if not self.truth_depth:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        truth_msg, sensor_msg = self.truth_depth.get(stamp), self.sensor_depth.get(stamp)
        if truth_msg is None or sensor_msg is None:
            self.depth_unmatched += 1
            return
        now = time.monotonic()
        if now - self._last_depth_score < 1.0 / DEPTH_SCORES_PER_S:
            return
        self._last_depth_score = now
        truth = image_msg_to_depth_m(truth_msg)
        sensor = image_msg_to_depth_m(sensor_msg)
        try:
            self.depth_all.add(depth_error(estimate_m, truth), int(np.isfinite(truth).sum()))
            holes = ~np.isfinite(sensor) & np.isfinite(truth)
            if holes.any():
                self.depth_holes.add(depth_error(estimate_m, truth, holes), int(holes.sum()))
        except InputError as exc:  # e.g. the node publishes depth at another size
            if len(self.depth_errors) < 3:
                self.depth_errors.append(str(exc))

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
        self._keep(self.depth_maps, msg, depth, _KEEP_PANELS)
        self._score_depth(msg, depth)

    def _on_objects(self, msg: PointCloud2) -> None:
        rows = pointcloud2_to_object_rows(msg)
        self.objects.append(len(rows))
        self.track_ids.update(int(i) for i in rows["track_id"])
        self._keep(self.object_tables, msg, rows, _KEEP_PANELS)
        if not self.truth_objects:
            return
        truth = self.truth_objects.get(stamp_to_ns(msg.header.stamp))
        if truth is None:
            self.box_unmatched += 1
            return
        boxes = np.stack([rows[k] for k in ("u1", "v1", "u2", "v2")], axis=1)
        truth_boxes = np.stack([truth[k] for k in ("u1", "v1", "u2", "v2")], axis=1)
        overlap = iou_matrix(boxes.reshape(-1, 4), truth_boxes.reshape(-1, 4))
        matches, _, _ = linear_assignment(1.0 - overlap, max_cost=0.5 + 1e-9)
        self.box_frames += 1
        self.box_matched += len(matches)
        self.box_detected += len(boxes)
        self.box_truth += len(truth_boxes)
        for row, col in matches:
            self._count_id_switch(int(truth["object_id"][col]), int(rows["track_id"][row]),
                                  truth_boxes[col])

    def _count_id_switch(self, object_id: int, track_id: int, truth_box: np.ndarray) -> None:
        """MOT-style id switch: the object's matched track id changed, unless the
        object itself jumped (the sim camera replays a loop of frames)."""
        self.id_matches += 1
        last = self._last_match.get(object_id)
        self._last_match[object_id] = (track_id, truth_box)
        if last is None or last[0] == track_id:
            return
        if iou_matrix(last[1][None], truth_box[None])[0, 0] >= _JUMP_IOU:
            self.id_switches += 1

    def reset(self) -> None:
        """Forget what arrived while the model was loading."""
        self.features.clear()
        self.feature_times.clear()
        self.token_ages_ms.clear()
        self.objects.clear()
        self.track_ids.clear()
        self.truth_counts.clear()
        self.truth_ids.clear()
        self.id_switches = self.id_matches = 0
        self._last_match.clear()
        self.depth_all, self.depth_holes = DepthScore(), DepthScore()
        self.depth_unmatched = self.box_unmatched = 0
        self.box_frames = self.box_matched = self.box_detected = self.box_truth = 0

    def picture(self, class_names: Sequence[str] = ()) -> Tuple[Optional[np.ndarray],
                                                                List[str], str]:
        """One frame's RGB, depth, tracked detections and attention side by side.

        The panels share one stamp: among the recent ones for which the RGB and
        every output that arrived at all are kept, the newest with the most
        tracked objects (just after the sim camera restarts its loop, tracks are
        still being confirmed). Returns the picture (None without RGB), the panel
        names and a note on the stamp.
        """
        if not self.rgb_msgs:
            return None, [], "no RGB received"
        streams = {"depth": self.depth_maps, "detections": self.object_tables,
                   "attention": self.attention_msgs}
        wanted = {name: store for name, store in streams.items() if store}
        common = set(self.rgb_msgs).intersection(*[set(s) for s in wanted.values()])
        note = "all panels from the frame stamped"
        if not common:  # e.g. a slow head: show each stream's newest instead
            wanted = {name: store for name, store in wanted.items()
                      if set(store) & set(self.rgb_msgs)}
            common = set(self.rgb_msgs).intersection(*[set(s) for s in wanted.values()])
            note = "panels without an output of that frame left out; frame stamped"
        tables = wanted.get("detections", {})
        stamp = max(common, key=lambda t: (len(tables[t]) if t in tables else 0, t))
        msg = self.rgb_msgs[stamp]
        rgb = decode_color(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                           msg.data)
        panels, names = [rgb], ["input"]
        if "depth" in wanted:
            panels.append(colorize_depth(wanted["depth"][stamp]))
            names.append("depth")
        if "detections" in wanted:
            panels.append(draw_objects(rgb, _object_table(wanted["detections"][stamp],
                                                          class_names)))
            names.append("detections")
        if "attention" in wanted:
            att = wanted["attention"][stamp]
            panels.append(decode_color(att.encoding, att.height, att.width, att.step,
                                       att.is_bigendian, att.data))
            names.append("attention")
        return side_by_side(panels, 360), names, f"{note} {stamp / 1e9:.3f} s"

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("vision"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics["level"] = str(int.from_bytes(status.level, "little")
                                                if isinstance(status.level, bytes)
                                                else status.level)
                self.diagnostics["message"] = status.message


def _object_table(rows: np.ndarray, class_names: Sequence[str]) -> ObjectTable:
    """A ``/vision/detections`` table back as an :class:`ObjectTable` for drawing."""
    boxes = np.stack([rows[k] for k in ("u1", "v1", "u2", "v2")], axis=1).reshape(-1, 4)
    tracks = Tracks(boxes, rows["score"], rows["class_id"].astype(np.int64),
                    rows["track_id"].astype(np.int64))
    xyz = np.stack([rows[k] for k in ("x", "y", "z")], axis=1).reshape(-1, 3)
    return ObjectTable(tracks, xyz, np.full_like(xyz, np.nan), tuple(class_names))


def _class_names(params: Dict[str, object]) -> Tuple[str, ...]:
    """Class names to label the drawn boxes with: the tabletop detector's one
    class, or a comma-separated ``detection.class_names``; else ``class_<id>``."""
    if params.get("detection.model") == "tabletop":
        return ("object",)
    names = params.get("detection.class_names")
    if isinstance(names, str) and "," in names:
        return tuple(name.strip() for name in names.split(","))
    return ()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to measure")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    parser.add_argument("--video", default="", help="a video file instead of the sim camera")
    parser.add_argument("--detector", default="",
                        help="an ONNX detector (e.g. ../shared/assets/ssdlite_person.onnx)")
    parser.add_argument("--picture", default="build/demo.png", help="where to write the picture")
    parser.add_argument("--depth-holes", type=float, default=0.2,
                        help="fraction of the sim camera's depth blanked in blobs (the ground "
                             "truth stays exact)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="extra node parameter (YAML value), repeatable")
    args = parser.parse_args(argv)

    import yaml
    params = {"backbone": args.backbone, "target_fps": args.rate}
    if args.video:
        params["depth.model"] = "none"  # a video has no depth camera
    else:
        # Holes filled from the nearest measured pixel; objects on the table found
        # in the depth (the sim's coloured boxes are no class a pretrained detector knows).
        params.update({"depth.fill_holes": "nearest", "detection.model": "tabletop"})
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
        camera = processes.start("sim_camera", params={"rate_hz": args.rate,
                                                       "depth_holes": args.depth_holes,
                                                       "cache_frames": SIM_LOOP_FRAMES},
                                 remaps={**REMAPS, **TRUTH_REMAPS})
    vision = processes.start("vision_node", params=params, remaps=REMAPS, stdout=logs)
    rclpy.init()
    monitor = Monitor(args.rate)
    if not args.video:
        monitor.listen_to_truth()
    try:
        source = args.video or (f"sim_camera (640x480 RGB-D, {args.depth_holes:.0%} of the "
                                f"depth in holes, exact ground truth)")
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
        monitor.reset()
        print(f"demo: features arriving; measuring for {args.seconds:g} s", flush=True)
        spin_for(monitor, args.seconds)
        picture, shown, picture_note = monitor.picture(_class_names(params))
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
    logs.seek(0)
    log_text = logs.read()
    heads = re.search(r"depth (\S+), detection (\S+)", log_text)
    depth_model, detector = heads.groups() if heads else ("?", "?")
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
              f"objects per frame, {len(monitor.track_ids)} distinct track ids")
    if not args.video:
        _print_scores(monitor, depth_model, detector)
    if d:
        print(f"node accounting     received {d.get('received', '?')}, processed "
              f"{d.get('processed', '?')}, skipped {d.get('skipped_total', '?')} "
              f"(rate {d.get('skipped_rate', '0')}, busy {d.get('skipped_busy', '0')})")
        print(f"node processing     p50 {d.get('processing_ms_p50', '?')} ms, "
              f"p99 {d.get('processing_ms_p99', '?')} ms; status: {d.get('message', '?')}")
    if picture is not None:
        import cv2
        os.makedirs(os.path.dirname(args.picture) or ".", exist_ok=True)
        cv2.imwrite(args.picture, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        print(f"picture             {os.path.abspath(args.picture)} ({picture_note})")
        print("  panels, left to right: " + "; ".join(f"{name}: {PANELS[name]}"
                                                      for name in shown))
    tail = [line for line in log_text.splitlines() if "frame accounting" in line]
    if tail:
        print("node shutdown log   " + tail[-1].split("]: ", 1)[-1])
    return 0 if monitor.features or rate > 0 else 1


def _print_scores(monitor: Monitor, depth_model: str, detector: str) -> None:
    """The ground-truth part of the summary: depth error and box recall / precision."""
    truth = monitor.truth_counts
    if not truth:
        print("ground truth        none received from sim_camera: nothing scored")
        return
    print(f"ground truth        {len(truth)} frames, {np.mean(truth):.1f} objects per frame "
          f"(boxes of visible pixels, exact depth)")
    if monitor.depth_all.frames:
        print(f"depth vs truth      depth.model {depth_model}, {monitor.depth_all.frames} "
              f"frames scored (matched by stamp)")
        print(f"  all pixels        {monitor.depth_all.text()}")
        print(f"  hole pixels       {monitor.depth_holes.text()}")
        if depth_model == "sensor" and not monitor.depth_holes.n:
            print("                    (the sensor model left the holes unknown: "
                  "depth.fill_holes=nearest or depth.model=unet with depth.weights=FILE "
                  "fills them)")
    elif monitor.depth_errors:
        print(f"depth vs truth      not scored: {monitor.depth_errors[0]}")
    else:
        print(f"depth vs truth      no /vision/depth matched the ground truth by stamp "
              f"(depth.model {depth_model}, {monitor.depth_unmatched} unmatched)")
    if monitor.box_frames:
        recall = monitor.box_matched / max(monitor.box_truth, 1)
        precision = (monitor.box_matched / monitor.box_detected if monitor.box_detected
                     else math.nan)
        print(f"boxes vs truth      detector {detector}: {monitor.box_frames} frames, "
              f"recall {100 * recall:.1f}%, precision {100 * precision:.1f}% at IoU 0.5 "
              f"({monitor.box_detected} boxes, {monitor.box_truth} true)")
        if monitor.box_detected == 0:
            print("                    the detector found nothing in the sim scene (it is not "
                  "trained on coloured boxes)")
        loop_s = SIM_LOOP_FRAMES / monitor.rate_hz
        print(f"track ids vs truth  {len(monitor.track_ids)} distinct track ids for "
              f"{len(monitor.truth_ids)} true objects; {monitor.id_switches} id "
              f"switch{'' if monitor.id_switches == 1 else 'es'} in "
              f"{monitor.id_matches} matched boxes (the sim camera replays a {loop_s:.0f} s "
              f"loop: objects jump back at each restart and get new ids, not counted as "
              f"switches)")
    else:
        print(f"boxes vs truth      detector {detector}: no /vision/detections to score "
              f"(detection.model none; --detector FILE.onnx or --set detection.model=...)"
              if detector == "none" else
              f"boxes vs truth      detector {detector}: no /vision/detections matched the "
              f"ground truth by stamp ({monitor.box_unmatched} unmatched)")


if __name__ == "__main__":
    sys.exit(main())
