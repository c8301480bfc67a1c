"""``python -m robot_vision_ros.tools.process INPUT``: the node's pipeline over a recording, no ROS.

INPUT is a video file, a folder of images, an RGB-D recording (a folder with
``rgb/`` + ``depth/``, ``.npz`` files) or a ROS 2 bag directory (with
``--bag-rgb-topic`` and ``--bag-depth-topic``). Every (N+1)-th frame
(``--skip-frames N``) goes through the same :class:`PerceptionPipeline` the
node runs, built from the same parameters (``--params`` YAML, ``--set
NAME=VALUE``). Stamps come from the frame index and the source's frame rate
(a bag's own stamps for a bag).

Offline there is no real-time budget, so unless ``--set`` says otherwise
``adaptive_heads`` is off (every head runs when due, the output does not
depend on the machine's speed) and ``target_fps`` is the processed rate in
stream time (``fps / (N + 1)``; the tracker converts ``max_lost`` with it).

Writes into ``--out``: ``features.npz``, ``depth/FRAME.png`` (16-bit
millimetres, 0 = unknown; only when there is depth), ``detections.csv`` (MOT
Challenge rows ``frame,id,bb_left,bb_top,bb_width,bb_height,conf,x,y,z``,
frame 1-based as in the source, x/y/z metres or -1), ``annotated.mp4`` and
``summary.json``. Bad input exits with code 2 and a one-line message.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

import cv2
import numpy as np
import yaml

from ..core.config import SPECS, VisionConfig, load_yaml, validate
from ..core.errors import ConfigError, InputError, ModelError, VisionError
from ..core.frames import CameraIntrinsics, RgbdFrame
from ..core.render import colorize_depth, draw_objects, overlay_attention, side_by_side
from ..core.video_source import VideoSource, load_camera_info_yaml, pinhole_guess

log = logging.getLogger("robot_vision_ros.tools.process")

#: Columns of the MOT Challenge results file (written without a header, as MOT tools expect).
MOT_COLUMNS = ("frame", "id", "bb_left", "bb_top", "bb_width", "bb_height", "conf", "x", "y", "z")
MOT_FILE = "detections.csv"
#: Rate assumed for sources that have none (image folders, RGB-D folders).
DEFAULT_FPS = 30.0
_MAX_DEPTH_MM = 65535


# --- parameters ------------------------------------------------------------------------------
def parse_set(items: Sequence[str]) -> Dict[str, Any]:
    """``['a.b=1', 'input_size=[64,64]']`` -> ``{'a.b': 1, 'input_size': [64, 64]}``.

    Values are YAML (as in a params file); a string parameter keeps the text
    verbatim, so ``weights=123`` stays the file name ``'123'``.
    """
    params: Dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--set expects NAME=VALUE, got {item!r}")
        spec = SPECS.get(name)
        if spec is not None and isinstance(spec.default, str):
            params[name] = text
            continue
        try:
            params[name] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {name}: cannot parse {text!r} as a value: {exc}") from exc
    return params


def offline_config(base: VisionConfig, overrides: Dict[str, Any],
                   source_fps: float) -> VisionConfig:
    """``base`` with the offline defaults (no adaptive heads, stream-time target_fps).

    A value the user set explicitly (``overrides``) wins.
    """
    changes: Dict[str, Any] = {}
    if "adaptive_heads" not in overrides:
        changes["adaptive_heads"] = False
    if "target_fps" not in overrides:
        rate = source_fps / (base.skip_frames + 1)
        lo, hi = SPECS["target_fps"].min, SPECS["target_fps"].max
        changes["target_fps"] = float(min(max(rate, lo), hi))
    return base.replace(**changes) if changes else base


# --- input -------------------------------------------------------------------------------------
@dataclass
class SourceFrame:
    """One frame read from the input: 0-based source index, RGB, optional depth and stamp.

    ``error`` is set (and ``rgb`` None) when the frame could not be decoded.
    """

    index: int
    rgb: Optional[np.ndarray]
    depth_m: Optional[np.ndarray] = None
    stamp_ns: Optional[int] = None
    error: Optional[InputError] = None


def check_input_exists(spec: str) -> Path:
    """``spec`` as a path; ConfigError when it names nothing (a digit is a camera device)."""
    path = Path(spec).expanduser()
    if not spec.isdigit() and not path.exists():
        raise ConfigError(f"input {spec} does not exist (expected a video file, an image "
                          f"folder, an RGB-D folder with rgb/ and depth/, or a ROS 2 bag)")
    return path


class OfflineInput:
    """Frames of a video, an image folder, an RGB-D recording or a bag, in order.

    ``frames(skip, max_frames)`` yields every ``skip + 1``-th frame of the
    first ``max_frames`` source frames; ``length`` is the source's frame count
    (0 when unknown); ``fps`` its rate (or ``fps_override``).
    """

    def __init__(self, spec: str, fps_override: Optional[float] = None, bag_rgb_topic: str = "",
                 bag_depth_topic: str = "", slop_s: float = 0.02) -> None:
        self.spec = spec
        path = check_input_exists(spec)
        self._video: Optional[VideoSource] = None
        self._recording = None
        if self._is_recording(path):
            # Imported here: RGB-D recordings (and rosbags for bags) are optional.
            from ..core.rgbd_dataset import RgbdRecording
            self._recording = RgbdRecording.open(path, bag_rgb_topic, bag_depth_topic, slop_s)
            self.kind = "bag" if (path / "metadata.yaml").is_file() else "rgbd"
            self.length = len(self._recording)
            self.has_depth = True
            fps = self._stamp_rate(self._recording.stamps_ns)
        else:
            self._video = VideoSource(spec)
            self.kind = "images" if path.is_dir() else "video"
            self.length = len(self._video)
            self.has_depth = False
            fps = self._video.fps if self.kind == "video" else DEFAULT_FPS
        if fps_override is not None:
            fps = fps_override
        if not (math.isfinite(fps) and fps > 0):
            raise ConfigError(f"frame rate of {spec} must be > 0, got {fps}; give --fps")
        self.fps = float(fps)

    @staticmethod
    def _is_recording(path: Path) -> bool:
        if path.is_file():
            return path.suffix in (".npz", ".db3", ".mcap")
        return path.is_dir() and ((path / "metadata.yaml").is_file() or (path / "rgb").is_dir()
                                  or any(path.glob("*.npz")))

    @staticmethod
    def _stamp_rate(stamps_ns: Sequence[int]) -> float:
        """Median rate of recorded stamps; DEFAULT_FPS when they carry none."""
        steps = np.diff(np.asarray(stamps_ns, dtype=np.int64))
        steps = steps[steps > 0]
        return 1e9 / float(np.median(steps)) if len(steps) else DEFAULT_FPS

    def frames(self, skip: int, max_frames: int = 0) -> Iterator[SourceFrame]:
        """Frames to process, in order; an undecodable one comes with ``error`` set."""
        limit = max_frames if max_frames > 0 else None
        if self._recording is not None:
            stop = len(self._recording) if limit is None else min(limit, len(self._recording))
            for index in range(0, stop, skip + 1):
                try:
                    sample = self._recording[index]
                except InputError as exc:
                    yield SourceFrame(index, None, error=exc)
                    continue
                stamp = sample.stamp_ns if self.kind == "bag" else None
                yield SourceFrame(index, sample.rgb, sample.depth_m, stamp)
            return
        index = 0
        while limit is None or index < limit:
            try:
                rgb = self._video.read()  # type: ignore[union-attr]
            except InputError as exc:
                if index % (skip + 1) == 0:
                    yield SourceFrame(index, None, error=exc)
                index += 1
                continue
            if rgb is None:
                return
            if index % (skip + 1) == 0:
                yield SourceFrame(index, rgb)
            index += 1

    def expected(self, skip: int, max_frames: int = 0) -> int:
        """How many frames :meth:`frames` yields (0 when the length is unknown)."""
        total = self.length if max_frames <= 0 else (
            min(max_frames, self.length) if self.length else max_frames)
        return (total + skip) // (skip + 1) if total else 0


# --- outputs -----------------------------------------------------------------------------------
class FeatureLog:
    """Pooled vectors (and tokens) of every processed frame, saved as one ``.npz``."""

    def __init__(self, keep_tokens: bool) -> None:
        self.keep_tokens = keep_tokens
        self.frames: List[int] = []
        self.stamps_ns: List[int] = []
        self.pooled: List[np.ndarray] = []
        self.tokens: List[np.ndarray] = []
        self.token_uv_px: List[np.ndarray] = []
        self.token_level: Optional[np.ndarray] = None

    def add(self, frame_number: int, features) -> None:
        if self.keep_tokens:
            if self.tokens and features.tokens.shape != self.tokens[0].shape:
                raise InputError(f"frame {frame_number}: {features.tokens.shape[0]} tokens, "
                                 f"earlier frames had {self.tokens[0].shape[0]}; --tokens "
                                 "needs frames of one size", reason="bad_size")
            self.tokens.append(features.tokens)
            self.token_uv_px.append(features.token_uv_px)
            self.token_level = features.token_level
        self.frames.append(frame_number)
        self.stamps_ns.append(features.stamp_ns)
        self.pooled.append(features.pooled)

    def save(self, path: Path, backbone: str) -> None:
        dim = self.pooled[0].shape[0] if self.pooled else 0
        arrays: Dict[str, np.ndarray] = {
            "frame": np.asarray(self.frames, dtype=np.int64),
            "stamps_ns": np.asarray(self.stamps_ns, dtype=np.int64),
            "pooled": (np.stack(self.pooled).astype(np.float32) if self.pooled
                       else np.zeros((0, dim), np.float32)),
            "backbone": np.asarray(backbone)}
        if self.keep_tokens and self.tokens:
            arrays["tokens"] = np.stack(self.tokens).astype(np.float32)
            arrays["token_uv_px"] = np.stack(self.token_uv_px).astype(np.float32)
            arrays["token_level"] = np.asarray(self.token_level, dtype=np.uint32)
        np.savez(path, **arrays)


def depth_to_png_mm(depth_m: np.ndarray) -> np.ndarray:
    """Metres (NaN unknown) -> uint16 millimetres, 0 = unknown, saturating at 65.535 m."""
    with np.errstate(invalid="ignore"):
        mm = np.where(np.isfinite(depth_m) & (depth_m > 0), np.rint(depth_m * 1000.0), 0.0)
    return np.clip(mm, 0, _MAX_DEPTH_MM).astype(np.uint16)


def mot_rows(frame_number: int, objects) -> List[str]:
    """MOT Challenge rows of one frame's :class:`ObjectTable` (x/y/z -1 when unknown)."""
    rows = []
    tracks = objects.tracks
    for i in range(len(objects)):
        x1, y1, x2, y2 = (float(v) for v in tracks.boxes_xyxy[i])
        xyz = [float(v) if math.isfinite(float(v)) else -1.0 for v in objects.xyz_m[i]]
        rows.append(f"{frame_number},{int(tracks.track_ids[i])},{x1:.2f},{y1:.2f},"
                    f"{x2 - x1:.2f},{y2 - y1:.2f},{float(tracks.scores[i]):.4f},"
                    f"{xyz[0]:.3f},{xyz[1]:.3f},{xyz[2]:.3f}")
    return rows


class AnnotatedVideo:
    """``annotated.mp4`` (mp4v): boxes with track ids, then depth and attention panels."""

    def __init__(self, path: Path, fps: float, depth_range_m: Tuple[float, float],
                 show_depth: bool, show_attention: bool) -> None:
        self.path = path
        self.fps = fps
        self.depth_range_m = depth_range_m
        self.show_depth = show_depth
        self.show_attention = show_attention
        self.frames_written = 0
        self._writer: Optional[cv2.VideoWriter] = None
        self._size: Optional[Tuple[int, int]] = None

    def compose(self, rgb: np.ndarray, result, frame_number: int) -> np.ndarray:
        """The picture of one processed frame (RGB)."""
        left = draw_objects(rgb, result.objects) if result.objects is not None else rgb.copy()
        cv2.putText(left, f"frame {frame_number}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
        panels = [left]
        if self.show_depth:
            depth = (result.depth.depth_m if result.depth is not None
                     else np.full(rgb.shape[:2], np.nan, np.float32))
            panels.append(colorize_depth(depth, *self.depth_range_m))
        if self.show_attention:
            panels.append(overlay_attention(rgb, result.attention)
                          if result.attention is not None else np.zeros_like(rgb))
        return side_by_side(panels, height=rgb.shape[0])

    def write(self, picture: np.ndarray) -> None:
        if self._writer is None:
            h, w = picture.shape[:2]
            # mp4v wants even sides.
            self._size = (w - w % 2, h - h % 2)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                           self.fps, self._size)
            if not self._writer.isOpened():
                raise ConfigError(f"OpenCV cannot write {self.path} with codec mp4v")
        if (picture.shape[1], picture.shape[0]) != self._size:
            picture = cv2.resize(picture, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


# --- progress and statistics -------------------------------------------------------------------
class Progress:
    """tqdm when installed, else a one-line bar on stderr redrawn at most twice a second."""

    def __init__(self, total: int, enabled: bool, stream: Optional[TextIO] = None) -> None:
        self.total = total
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._bar = None
        self._last = 0.0
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total or None, unit="frame", file=self.stream,
                                 dynamic_ncols=True)

    def update(self, postfix: str = "") -> None:
        self.count += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= 0.5 or self.count == self.total:
            self._last = now
            if self.total:
                done = int(30 * self.count / self.total)
                bar = f"[{'#' * done}{'.' * (30 - done)}] {self.count}/{self.total}"
            else:
                bar = f"{self.count} frames"
            self.stream.write(f"\r{bar} {postfix}")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.count:
            self.stream.write("\n")


class StageTimes:
    """Per-stage samples in milliseconds; summarised as count, mean, p50, p90, max."""

    def __init__(self) -> None:
        self.samples: Dict[str, List[float]] = {}

    def add(self, timings_ms: Dict[str, float], prefix: str = "") -> None:
        for name, value in timings_ms.items():
            self.samples.setdefault(prefix + name, []).append(float(value))

    def summary(self) -> Dict[str, Dict[str, float]]:
        out = {}
        for name, values in self.samples.items():
            arr = np.asarray(values)
            out[name] = {"count": int(arr.size), "mean": float(arr.mean()),
                         "p50": float(np.percentile(arr, 50)),
                         "p90": float(np.percentile(arr, 90)), "max": float(arr.max())}
        return out


# --- the run -----------------------------------------------------------------------------------
@dataclass
class RunOptions:
    """What to write and how much to process."""

    out_dir: Path
    max_frames: int = 0
    write_video: bool = True
    keep_tokens: bool = False
    attention: bool = False
    progress: bool = True
    camera_info: str = ""


def _intrinsics_for(rgb: np.ndarray, calibrated: Optional[CameraIntrinsics],
                    cache: Dict[Tuple[int, int], CameraIntrinsics]) -> CameraIntrinsics:
    h, w = rgb.shape[:2]
    if calibrated is not None:
        return calibrated if (calibrated.width, calibrated.height) == (w, h) \
            else calibrated.scaled(w, h)
    if (w, h) not in cache:
        cache[(w, h)] = pinhole_guess(w, h)
    return cache[(w, h)]


def run(source: OfflineInput, cfg: VisionConfig, options: RunOptions) -> Dict[str, Any]:
    """Process ``source`` with the pipeline of ``cfg``, write the outputs; return the summary.

    Raises ConfigError/WeightsError for a bad configuration and ModelError when
    a model fails; a frame that cannot be decoded or used (InputError) is
    counted as dropped and skipped.
    """
    # Imported here so argument errors are reported before torch loads.
    from ..core.perception import PerceptionPipeline

    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    skip = cfg.skip_frames
    calibrated = load_camera_info_yaml(options.camera_info) if options.camera_info else None
    t_build = time.perf_counter()
    pipeline = PerceptionPipeline.from_config(cfg)
    pipeline.warmup()
    build_s = time.perf_counter() - t_build
    want_attention = options.attention and pipeline.attention_available
    if options.attention and not want_attention:
        log.warning("--attention: backbone '%s' has no attention map; no attention panel",
                    cfg.backbone)
    depth_on = cfg.depth_model != "none" and (cfg.depth_model != "sensor" or source.has_depth)
    processed_fps = source.fps / (skip + 1)
    video = (AnnotatedVideo(out / "annotated.mp4", processed_fps,
                            (cfg.depth_min_m, cfg.depth_max_m), depth_on, want_attention)
             if options.write_video else None)
    features = FeatureLog(options.keep_tokens)
    times = StageTimes()
    events: Dict[str, int] = {}
    drops: Dict[str, int] = {}
    track_ids: set = set()
    mot_file = (out / MOT_FILE).open("w") if pipeline.detection is not None else None
    depth_dir = out / "depth"
    depth_pngs = 0
    intrinsics_cache: Dict[Tuple[int, int], CameraIntrinsics] = {}
    progress = Progress(source.expected(skip, options.max_frames), options.progress)
    last_stamp: Optional[int] = None
    interrupted = False
    frames = source.frames(skip, options.max_frames)
    t_start = time.perf_counter()
    try:
        while True:
            t0 = time.perf_counter()
            item = next(frames, None)
            if item is None:
                break
            number = item.index + 1
            if item.error is not None or item.rgb is None:
                reason = item.error.reason if item.error is not None else "bad_input"
                drops[reason] = drops.get(reason, 0) + 1
                log.warning("frame %d dropped: %s", number, item.error)
                continue
            stamp = item.stamp_ns if item.stamp_ns is not None else \
                round(item.index * 1e9 / source.fps)
            if last_stamp is not None and stamp < last_stamp:
                pipeline.reset()  # as the node does when stamps jump backwards
            last_stamp = stamp
            frame = RgbdFrame(rgb=item.rgb, stamp_ns=int(stamp), frame_id="camera",
                              depth_m=item.depth_m,
                              intrinsics=_intrinsics_for(item.rgb, calibrated, intrinsics_cache))
            t1 = time.perf_counter()
            try:
                result = pipeline.process(frame, want_attention=want_attention)
            except InputError as exc:
                drops[exc.reason] = drops.get(exc.reason, 0) + 1
                log.warning("frame %d dropped: %s", number, exc)
                continue
            t2 = time.perf_counter()
            times.add(result.features.timings_ms)
            if result.depth is not None and not result.depth_reused:
                times.add(result.depth.timings_ms)
            if pipeline.detection is not None:
                times.add(pipeline.detection.last_timings_ms)
            for name, count in result.events.items():
                events[name] = events.get(name, 0) + count
            features.add(number, result.features)
            if mot_file is not None and result.objects is not None:
                rows = mot_rows(number, result.objects)
                mot_file.write("".join(row + "\n" for row in rows))
                track_ids.update(int(t) for t in result.objects.tracks.track_ids)
            if depth_on and result.depth is not None and result.depth.source != "none":
                depth_dir.mkdir(exist_ok=True)
                cv2.imwrite(str(depth_dir / f"{number:06d}.png"),
                            depth_to_png_mm(result.depth.depth_m))
                depth_pngs += 1
            if video is not None:
                video.write(video.compose(item.rgb, result, number))
            t3 = time.perf_counter()
            times.add({"read_ms": (t1 - t0) * 1e3, "pipeline_ms": (t2 - t1) * 1e3,
                       "write_ms": (t3 - t2) * 1e3})
            n_objects = len(result.objects) if result.objects is not None else 0
            progress.update(f"{(t2 - t1) * 1e3:.0f} ms, {n_objects} objects")
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: writing what was processed so far")
    finally:
        wall_s = time.perf_counter() - t_start
        progress.close()
        if video is not None:
            video.close()
        if mot_file is not None:
            mot_file.close()
    features.save(out / "features.npz", pipeline.encoder.backbone)
    stages = times.summary()
    processed = len(features.frames)
    pipeline_s = sum(times.samples.get("pipeline_ms", [])) / 1e3
    summary: Dict[str, Any] = {
        "input": {"spec": source.spec, "kind": source.kind, "fps": source.fps,
                  "frames": source.length, "has_depth": source.has_depth},
        "frames": {"processed": processed, "skip_frames": skip, "max_frames": options.max_frames,
                   "dropped": drops, "interrupted": interrupted},
        "throughput": {
            "wall_s": wall_s, "build_s": build_s,
            "end_to_end_fps": processed / wall_s if wall_s > 0 else 0.0,
            "pipeline_fps": processed / pipeline_s if pipeline_s > 0 else 0.0,
            "device": str(pipeline.encoder.target.device)},
        "stages_ms": stages,
        "events": events,
        "tracks": {"unique_ids": len(track_ids)} if pipeline.detection is not None else None,
        "outputs": {"features": "features.npz", "mot_columns": list(MOT_COLUMNS),
                    "tracks": MOT_FILE if pipeline.detection is not None else None,
                    "depth_pngs": depth_pngs,
                    "video": "annotated.mp4" if video is not None else None,
                    "video_frames": video.frames_written if video is not None else 0},
        "config": cfg.to_params(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_report(summary: Dict[str, Any]) -> str:
    """Throughput and per-stage times as printed at the end of a run."""
    frames, tp = summary["frames"], summary["throughput"]
    lines = [f"processed {frames['processed']} frames (every {frames['skip_frames'] + 1}. of "
             f"{summary['input']['frames'] or '?'}) on {tp['device']} in {tp['wall_s']:.1f} s: "
             f"{tp['end_to_end_fps']:.2f} frames/s end to end, {tp['pipeline_fps']:.2f} "
             f"frames/s in the pipeline (models built in {tp['build_s']:.1f} s)",
             f"{'stage':<16}{'runs':>6}{'mean ms':>10}{'p50 ms':>9}{'p90 ms':>9}{'max ms':>9}"]
    for name, s in summary["stages_ms"].items():
        lines.append(f"{name:<16}{s['count']:>6}{s['mean']:>10.1f}{s['p50']:>9.1f}"
                     f"{s['p90']:>9.1f}{s['max']:>9.1f}")
    if summary["tracks"] is not None:
        lines.append(f"tracks: {summary['tracks']['unique_ids']} ids")
    if frames["dropped"]:
        lines.append(f"dropped: {frames['dropped']}")
    return "\n".join(lines)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m robot_vision_ros.tools.process",
        description="Run the vision node's pipeline over a video, an image folder, an RGB-D "
                    "recording or a ROS 2 bag, without ROS.")
    parser.add_argument("input", help="video file, image folder, RGB-D folder (rgb/ + depth/ "
                        "or *.npz) or ROS 2 bag directory")
    parser.add_argument("--params", default="", help="ROS 2 params file (config/vision.yaml "
                        "layout); default: the built-in defaults, which equal it")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                        help="override one parameter (YAML value), e.g. backbone=vit_small or "
                             "input_size=[160,160]; repeatable")
    parser.add_argument("--skip-frames", type=_non_negative, default=None, metavar="N",
                        help="process every (N+1)-th frame (default: skip_frames of the "
                             "parameters; its 0 = adaptive means every frame offline)")
    parser.add_argument("--out", default="process_out", help="output folder (created)")
    parser.add_argument("--max-frames", type=_non_negative, default=0, metavar="N",
                        help="read at most N source frames (0 = all)")
    parser.add_argument("--no-video", action="store_true", help="do not write annotated.mp4")
    parser.add_argument("--tokens", action="store_true",
                        help="also save the spatial tokens in features.npz")
    parser.add_argument("--attention", action="store_true",
                        help="ViT backbones: add the CLS attention overlay to the video")
    parser.add_argument("--fps", type=_positive_float, default=None,
                        help="source frame rate for the stamps (default: the video's, a bag's "
                             f"stamps, else {DEFAULT_FPS:g})")
    parser.add_argument("--camera-info", default="",
                        help="ROS calibration YAML of the camera (default: a 60 degree pinhole "
                             "guess, as video_camera does)")
    parser.add_argument("--bag-rgb-topic", default="", help="colour Image topic of a bag")
    parser.add_argument("--bag-depth-topic", default="", help="depth Image topic of a bag")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    prog = "process"
    try:
        check_input_exists(args.input)  # before the parameters pull in torch
        overrides = parse_set(args.sets)
        params = load_yaml(args.params) if args.params else {}
        params.update(overrides)
        if args.skip_frames is not None:
            params["skip_frames"] = args.skip_frames
            overrides["skip_frames"] = args.skip_frames
        base = validate(params)
        source = OfflineInput(args.input, args.fps, args.bag_rgb_topic, args.bag_depth_topic,
                              base.sync_slop_s)
        cfg = offline_config(base, overrides, source.fps)
        options = RunOptions(out_dir=Path(args.out), max_frames=args.max_frames,
                             write_video=not args.no_video, keep_tokens=args.tokens,
                             attention=args.attention, progress=not args.quiet,
                             camera_info=args.camera_info)
        summary = run(source, cfg, options)
    except ModelError as exc:
        print(f"{prog}: model error: {exc}", file=sys.stderr)
        return 1
    except VisionError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(summary))
    print(f"outputs in {options.out_dir}")
    return 130 if summary["frames"]["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
