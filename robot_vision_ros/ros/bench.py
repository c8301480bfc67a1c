"""End-to-end benchmark of the node across processes (ros2_benchmark style).

For each configuration: the model alone in a plain loop (the ceiling), then
the real ``vision_node`` in its own process fed by the simulated RGB-D camera
(another process) at fixed rates, and optionally a search for the peak rate
with under 5% drops. Every figure is the median of several runs. Output: a
JSON document and a short table. Run it through
``python -m robot_vision_ros.tools.bench``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, PointCloud2

from ..core.config import validate
from ..core.frames import RgbdFrame
from ..core.pipeline import EncoderPipeline
from ..core.sim_scene import SimScene
from . import processes
from .conversions import image_msg_to_rgb, rgb_to_image_msg, stamp_to_ns
from .qos import keep_last
from .spin import spin_for

TOPICS = {"camera/color/image_raw": "/bench/rgb", "camera/depth/image_raw": "/bench/depth",
          "camera/color/camera_info": "/bench/info"}
MAX_DROP = 0.05


@dataclass
class Window:
    """What one measurement window saw."""

    sent: int
    delivered: int
    published: int
    seconds: float
    ages_ms: List[float]
    arrivals: List[float]
    node_cpu_percent: float
    node_rss_mb: float
    node_diag: Dict[str, str]
    head_ages_ms: Dict[str, List[float]]

    def summary(self, rate_hz: float) -> Dict[str, float]:
        ages = np.array(self.ages_ms) if self.ages_ms else np.array([np.nan])
        gaps = np.diff(self.arrivals) * 1e3 if len(self.arrivals) > 2 else np.array([np.nan])
        processing = float(self.node_diag.get("processing_ms_p50", "nan"))
        return {
            "input_hz": rate_hz,
            "sent": self.sent,
            "published": self.published,
            "achieved_fps": self.published / self.seconds,
            "drop_fraction": 1.0 - self.delivered / self.sent if self.sent else 1.0,
            "age_ms_p50": float(np.nanpercentile(ages, 50)),
            "age_ms_p95": float(np.nanpercentile(ages, 95)),
            "age_ms_p99": float(np.nanpercentile(ages, 99)),
            "jitter_ms": float(np.nanstd(gaps)),
            "node_processing_ms_p50": processing,
            "age_bound_ms": processing + 2 * 1000.0 / rate_hz + 10.0,
            **self._head_summary(),
            "node_cpu_percent": self.node_cpu_percent,
            "node_rss_mb": self.node_rss_mb,
            # The node's own accounting (cumulative since activation), e.g. head runs.
            "node_counters": {k: float(v) for k, v in self.node_diag.items()
                              if _is_number(v)},
        }

    def _head_summary(self) -> Dict[str, float]:
        """Output rate and age of each head's topic (absent heads publish nothing)."""
        out: Dict[str, float] = {}
        for head, ages in self.head_ages_ms.items():
            out[f"{head}_fps"] = len(ages) / self.seconds
            values = np.array(ages) if ages else np.array([np.nan])
            out[f"{head}_age_ms_p50"] = float(np.nanpercentile(values, 50))
            out[f"{head}_age_ms_p99"] = float(np.nanpercentile(values, 99))
        return out


class _Listener(Node):
    def __init__(self) -> None:
        super().__init__("vision_bench")
        self.sent_stamps: List[int] = []
        self.out_stamps: List[int] = []
        self.recording = False
        self.ages_ms: List[float] = []
        self.arrivals: List[float] = []
        self.diag: Dict[str, str] = {}
        self.head_ages_ms: Dict[str, List[float]] = {"depth": [], "detections": []}
        self.create_subscription(CameraInfo, TOPICS["camera/color/camera_info"], self._on_info,
                                 keep_last("best_effort", 50))
        self.create_subscription(PointCloud2, "/vision/features/tokens", self._on_tokens,
                                 keep_last("reliable", 50))
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag,
                                 keep_last("reliable", 10))
        # Depth is measured on its camera_info (same header, a few hundred bytes) so
        # the bench does not spend the node's cores copying depth images.
        self.create_subscription(CameraInfo, "/vision/depth/camera_info",
                                 lambda m: self._on_head("depth", m), keep_last("reliable", 50))
        self.create_subscription(PointCloud2, "/vision/detections",
                                 lambda m: self._on_head("detections", m),
                                 keep_last("reliable", 50))

    def _on_head(self, head: str, msg: Any) -> None:
        if self.recording:
            now = self.get_clock().now().nanoseconds
            self.head_ages_ms[head].append((now - stamp_to_ns(msg.header.stamp)) / 1e6)

    def _on_info(self, msg: CameraInfo) -> None:
        if self.recording:
            self.sent_stamps.append(stamp_to_ns(msg.header.stamp))

    def _on_tokens(self, msg: PointCloud2) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        self.out_stamps.append(stamp)
        if self.recording:
            now = self.get_clock().now().nanoseconds
            self.ages_ms.append((now - stamp) / 1e6)
            self.arrivals.append(time.monotonic())

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("vision"):
                self.diag = {kv.key: kv.value for kv in status.values}

    def reset(self) -> None:
        self.sent_stamps, self.out_stamps, self.ages_ms, self.arrivals = [], [], [], []
        self.head_ages_ms = {head: [] for head in self.head_ages_ms}

    def spin_for(self, seconds: float) -> None:
        spin_for(self, seconds, step_s=0.02)


def _proc_ticks(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def _proc_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def _node_pid(proc) -> int:
    """The node's Python process (the ROS wheels re-exec in place, so the pid holds)."""
    return proc.pid


def ceiling(params: Dict[str, Any], seconds: float, width: int, height: int) -> Dict[str, float]:
    """The model alone in a plain loop on real-sized frames, and conversion+preprocess cost."""
    cfg = validate(params)
    pipeline = EncoderPipeline.from_config(cfg)
    scene = SimScene(width, height, seed=1)
    msgs = [rgb_to_image_msg(scene.render(i).rgb, None) for i in range(8)]
    pipeline.warmup(3)
    conv = []
    for i in range(60):
        t0 = time.perf_counter()
        rgb = image_msg_to_rgb(msgs[i % len(msgs)])
        pipeline.preprocess(rgb)
        conv.append((time.perf_counter() - t0) * 1e3)
    frames = [RgbdFrame(rgb=image_msg_to_rgb(m), stamp_ns=i) for i, m in enumerate(msgs)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pipeline.process(frames[n % len(frames)])
        n += 1
    elapsed = time.perf_counter() - t0
    return {"ceiling_fps": n / elapsed, "ceiling_ms": elapsed / n * 1e3,
            "convert_preprocess_ms_p50": float(np.median(conv))}


class NodeUnderTest:
    """A vision_node process plus a camera process restarted per rate."""

    def __init__(self, params: Dict[str, Any], listener: _Listener, log_dir: str) -> None:
        self.listener = listener
        self.log = open(os.path.join(log_dir, f"node_{params['backbone']}.log"), "w+")
        self.proc = processes.start("vision_node", params=params, remaps=TOPICS,
                                    stdout=self.log)
        self.camera = None

    def wait_ready(self, timeout_s: float = 300) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.log.flush()
            with open(self.log.name) as f:
                text = f.read()
            if "active: waiting" in text:
                return
            if self.proc.poll() is not None or "configure failed" in text:
                raise RuntimeError(f"vision_node did not start:\n{text[-3000:]}")
            self.listener.spin_for(0.2)
        raise RuntimeError("vision_node did not become active in time")

    def measure(self, rate_hz: float, seconds: float, warmup_s: float = 2.0) -> Window:
        # No ground truth: the bench measures the node, not the simulator's extras.
        camera = processes.start("sim_camera", params={"rate_hz": float(rate_hz),
                                                       "publish_ground_truth": False},
                                 remaps=TOPICS, stdout=open(os.devnull, "w"))
        try:
            listener = self.listener
            listener.spin_for(warmup_s)
            listener.reset()
            pid = _node_pid(self.proc)
            ticks0, t0 = _proc_ticks(pid), time.monotonic()
            listener.recording = True
            listener.spin_for(seconds)
            listener.recording = False
            ticks1, t1 = _proc_ticks(pid), time.monotonic()
            # Frames sent in the window count as delivered if their features arrive
            # within a grace period after it (they were in flight at its end).
            listener.spin_for(1.0)
            delivered = len(set(listener.sent_stamps) & set(listener.out_stamps))
            hz = os.sysconf("SC_CLK_TCK")
            cpu = (100.0 * (ticks1 - ticks0) / hz / (t1 - t0)
                   if ticks0 is not None and ticks1 is not None else float("nan"))
            return Window(len(set(listener.sent_stamps)), delivered, len(listener.ages_ms),
                          t1 - t0, list(listener.ages_ms), list(listener.arrivals), cpu,
                          _proc_rss_mb(pid), dict(listener.diag),
                          {k: list(v) for k, v in listener.head_ages_ms.items()})
        finally:
            processes.stop(camera)
            self.listener.spin_for(0.5)

    def close(self) -> None:
        processes.stop(self.proc)
        self.log.close()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _median_dicts(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Median of every numeric field across runs (nested dicts: the last run's)."""
    return {k: (items[-1][k] if isinstance(items[0][k], dict)
                else float(statistics.median(d[k] for d in items))) for k in items[0]}


def run_config(params: Dict[str, Any], args: argparse.Namespace,
               listener: _Listener) -> Dict[str, Any]:
    """Ceiling, fixed rates and (optionally) the peak search for one configuration."""
    result: Dict[str, Any] = {"params": params}
    ceilings = [ceiling(params, args.ceiling_seconds, args.width, args.height)
                for _ in range(args.runs)]
    result["ceiling"] = _median_dicts(ceilings)
    node = NodeUnderTest(params, listener, args.log_dir)
    try:
        node.wait_ready()
        result["rates"] = {}
        for rate in args.rates:
            runs = [node.measure(rate, args.seconds, args.warmup_seconds).summary(rate) for _ in range(args.runs)]
            result["rates"][f"{rate:g}"] = dict(_median_dicts(runs), runs=runs)
        if args.peak:
            result["peak"] = _peak(node, args, result["ceiling"]["ceiling_fps"])
    finally:
        node.close()
    ceil = result["ceiling"]["ceiling_fps"]
    for rate_result in result["rates"].values():
        possible = min(ceil, rate_result["input_hz"])
        rate_result["ratio_to_ceiling"] = rate_result["achieved_fps"] / possible
    if args.peak:
        result["peak"]["ratio_to_ceiling"] = result["peak"]["peak_rate_hz"] / ceil
    return result


def _peak(node: NodeUnderTest, args: argparse.Namespace, ceiling_fps: float) -> Dict[str, Any]:
    """Highest input rate with under 5% drops (bisection, medians of runs)."""
    lo, hi = 1.0, max(4.0, ceiling_fps * 1.5)
    probes = []
    for _ in range(args.peak_steps):
        mid = (lo + hi) / 2
        runs = [node.measure(mid, args.seconds, args.warmup_seconds).summary(mid) for _ in range(args.runs)]
        drop = statistics.median(r["drop_fraction"] for r in runs)
        probes.append({"input_hz": mid, "drop_fraction": drop})
        lo, hi = (mid, hi) if drop < MAX_DROP else (lo, mid)
    return {"peak_rate_hz": lo, "probes": probes}


def _table(results: List[Dict[str, Any]]) -> str:
    rows = ["config | ceiling fps | conv+pre ms | input Hz | achieved fps | drop % | "
            "age p50/p99 ms | ratio | cpu %",
            "---|---|---|---|---|---|---|---|---"]
    for res in results:
        p = res["params"]
        name = f"{p['backbone']} {p.get('precision', 'fp32')} {p['input_size'][0]}"
        c = res["ceiling"]
        for rate, r in res["rates"].items():
            rows.append(f"{name} | {c['ceiling_fps']:.1f} | {c['convert_preprocess_ms_p50']:.2f} | "
                        f"{rate} | {r['achieved_fps']:.1f} | {100 * r['drop_fraction']:.1f} | "
                        f"{r['age_ms_p50']:.0f}/{r['age_ms_p99']:.0f} | "
                        f"{r['ratio_to_ceiling']:.2f} | {r['node_cpu_percent']:.0f}")
            for head in ("depth", "detections"):
                if r.get(f"{head}_fps", 0.0) > 0:
                    rows.append(f"{name} {head} | | | {rate} | {r[f'{head}_fps']:.1f} | | "
                                f"{r[f'{head}_age_ms_p50']:.0f}/{r[f'{head}_age_ms_p99']:.0f}"
                                " | | ")
        if "peak" in res:
            rows.append(f"{name} | peak | | {res['peak']['peak_rate_hz']:.1f} Hz with <5% drops "
                        f"| | | | {res['peak']['ratio_to_ceiling']:.2f} |")
    return "\n".join(rows)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m robot_vision_ros.tools.bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="resnet18",
                        help="comma-separated encoders (default: resnet18)")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32,bf16,fp16")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--output-dim", type=int, default=768)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rates", default="10,30,60", help="input rates in Hz")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measurement window")
    parser.add_argument("--ceiling-seconds", type=float, default=4.0)
    parser.add_argument("--warmup-seconds", type=float, default=4.0,
                        help="camera running before each window is measured (a new camera "
                             "process needs DDS discovery and its frame cache)")
    parser.add_argument("--target-fps", type=float, default=1000.0,
                        help="node target_fps (default: no rate limit, measures capacity)")
    parser.add_argument("--peak", action="store_true", help="search the peak rate")
    parser.add_argument("--peak-steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="extra node parameter (YAML value), repeatable")
    parser.add_argument("--json", default="", help="write the JSON result here")
    parser.add_argument("--log-dir", default="build/bench", help="node logs")
    args = parser.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",") if r]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    import yaml

    args = parse_args(argv)
    os.makedirs(args.log_dir, exist_ok=True)
    extra = {}
    for item in args.set:
        name, _, value = item.partition("=")
        extra[name] = yaml.safe_load(value)
    rclpy.init()
    listener = _Listener()
    results = []
    try:
        for backbone in args.backbones.split(","):
            for precision in args.precisions.split(","):
                params = {"backbone": backbone, "precision": precision,
                          "input_size": [args.input_size, args.input_size],
                          "output_dim": args.output_dim, "device": args.device,
                          "target_fps": args.target_fps}
                params.update(extra)
                print(f"bench: {backbone} {precision} ...", file=sys.stderr, flush=True)
                results.append(run_config(params, args, listener))
    finally:
        listener.destroy_node()
        rclpy.try_shutdown()
    doc = {"tool": "robot_vision_ros.tools.bench", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "platform": platform.platform()},
           "settings": {k: v for k, v in vars(args).items() if k != "set"},
           "results": results}
    text = json.dumps(doc, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)
    print(_table(results), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
