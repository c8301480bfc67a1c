"""``python -m robot_vision_ros.tools.eval_tracking``: measure the detector + tracker.

Sub-commands (``--help`` on each lists the options):

* ``sim``: a simulated multi-object sequence with ground-truth ids (objects
  that move at constant or changing velocity, cross, stop and get occluded by
  each other and by a static pillar; noisy, dropped and false detections).
  Our :class:`~robot_vision_ros.tracking.Tracker` and the reference SORT and
  ByteTrack of the ``trackers`` package see identical detections; MOTA, IDF1,
  ID switches, fragmentations and MT/ML come from ``motmetrics``.
* ``video``: a real detector on every frame of a real video, once; identical
  detections go to our tracker and the reference ByteTrack. Without ground
  truth, identities are judged against each other (:func:`identity_agreement`).
* ``speed``: time per frame of the detectors and of our tracker alone.

ROS-free: the cross-process run through the real node is
``python -m robot_vision_ros.ros.eval_tracking_node``, which reuses this module.
``trackers`` and ``motmetrics`` are evaluation-only dependencies, imported
where they are used.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.detections import Detections
from ..core.errors import ConfigError, VisionError
from ..tracking import Tracker, TrackerConfig, iou_matrix, linear_assignment

TRACKER_NAMES = ("ours", "sort", "bytetrack")
#: IoU at which a hypothesis box counts as covering a ground-truth box (the MOT convention).
MATCH_IOU = 0.5
#: The reference trackers count their lost-track buffer in 30 FPS frames.
_REFERENCE_BUFFER_FPS = 30.0


# ------------------------------------------------------------------ tables of boxes

@dataclass(frozen=True)
class FrameBoxes:
    """Identified boxes of one frame: ground truth or a tracker's output.

    ``ids [N]`` int64, ``boxes_xyxy [N, 4]`` float64 pixels.
    """

    ids: np.ndarray
    boxes_xyxy: np.ndarray

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        boxes = np.asarray(self.boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        if len(ids) != len(boxes):
            raise ValueError(f"{len(ids)} ids for {len(boxes)} boxes")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "boxes_xyxy", boxes)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> "FrameBoxes":
        return cls(np.zeros(0, np.int64), np.zeros((0, 4)))


# ------------------------------------------------------------------ simulated sequence

@dataclass(frozen=True)
class SimConfig:
    """Parameters of :func:`simulate_sequence`; defaults are the ``sim`` command's."""

    num_frames: int = 600
    num_objects: int = 10
    rate_hz: float = 30.0
    width_px: int = 1280
    height_px: int = 720
    drop_rate: float = 0.1
    noise_px: float = 2.0
    false_positives_per_frame: float = 0.3
    # Below this visible fraction an object is hidden: no detection, not in the ground truth.
    min_visible: float = 0.3
    # A detection made hard (blur, pose) gets a score in [0.3, 0.5) regardless of visibility.
    hard_rate: float = 0.05
    # Static occluder (a pillar), xyxy pixels: it hides objects up to 70 px wide for a
    # few to a few tens of frames, depending on their speed (median about 10).
    occluder_xyxy: Tuple[float, float, float, float] = (615.0, 0.0, 665.0, 720.0)

    def __post_init__(self) -> None:
        if self.num_frames < 2 or self.num_objects < 2:
            raise ConfigError(f"need at least 2 frames and 2 objects, got {self.num_frames} "
                              f"frames and {self.num_objects} objects")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if not (self.noise_px >= 0.0 and self.false_positives_per_frame >= 0.0
                and self.rate_hz > 0.0):
            raise ConfigError("noise_px and false_positives_per_frame must be >= 0 and "
                              "rate_hz > 0")


@dataclass(frozen=True)
class SimSequence:
    """A simulated sequence: true state of every object and the detections made of it.

    Per frame ``t`` and object ``i``: ``boxes_xyxy [T, N, 4]`` (always inside
    the image), ``visibility [T, N]`` (fraction not covered by nearer objects
    or the pillar), ``speed_px [T, N]`` (pixels moved since the previous frame),
    ``detected`` and ``dropped [T, N]`` (a visible object that the simulated
    detector missed at random). ``detections[t]`` are shuffled;
    ``detection_object[t]`` gives each one's object index, -1 for clutter
    (false positives). Object ``i`` has id ``i + 1``.
    """

    config: SimConfig
    seed: int
    boxes_xyxy: np.ndarray
    visibility: np.ndarray
    speed_px: np.ndarray
    detected: np.ndarray
    dropped: np.ndarray
    detections: List[Detections]
    detection_object: List[np.ndarray]

    @property
    def false_positive(self) -> List[np.ndarray]:
        """Per frame, which detections are clutter."""
        return [objects < 0 for objects in self.detection_object]

    @property
    def stamps_s(self) -> np.ndarray:
        return np.arange(self.config.num_frames) / self.config.rate_hz

    @property
    def visible(self) -> np.ndarray:
        """``[T, N]`` objects a detector could see (visibility >= ``min_visible``)."""
        return self.visibility >= self.config.min_visible

    def ground_truth(self) -> List[FrameBoxes]:
        """Per frame, the visible objects with their ids (hidden ones are not scored)."""
        out = []
        for t in range(self.config.num_frames):
            idx = np.flatnonzero(self.visible[t])
            out.append(FrameBoxes(idx + 1, self.boxes_xyxy[t, idx]))
        return out


def simulate_sequence(seed: int, config: Optional[SimConfig] = None) -> SimSequence:
    """A deterministic (per ``seed``) MOT sequence; see :class:`SimSequence`.

    Objects 0-3 are two scripted pairs walking towards each other on nearly the
    same line at different depths, so they cross and the nearer hides the
    farther. The others start at random; by index they keep a constant velocity
    (bouncing off the borders), turn and change speed at random, or walk and
    stop for 20-45 frames at a time. Everything crosses the pillar now and then.
    """
    cfg = config or SimConfig()
    rng = np.random.default_rng(seed)
    n, frames = cfg.num_objects, cfg.num_frames
    width, height = float(cfg.width_px), float(cfg.height_px)
    w = rng.uniform(40.0, 80.0, n)
    h = w * rng.uniform(1.8, 2.4, n)
    depth = rng.permutation(n).astype(np.float64)  # distinct: a strict occlusion order
    cx = rng.uniform(w / 2, width - w / 2)
    cy = rng.uniform(h / 2, height - h / 2)
    heading = rng.uniform(0.0, 2.0 * math.pi, n)
    speed = rng.uniform(1.0, 4.0, n)
    for pair in range(min(2, n // 2)):  # scripted crossings
        a, b = 2 * pair, 2 * pair + 1
        line_y = height * (0.3 + 0.4 * pair)
        cx[a], cx[b] = 0.15 * width, 0.85 * width
        cy[a], cy[b] = line_y, line_y + rng.uniform(-15.0, 15.0)
        heading[a], heading[b] = rng.normal(0.0, 0.05), math.pi + rng.normal(0.0, 0.05)
        speed[a], speed[b] = rng.uniform(2.0, 4.0), rng.uniform(2.0, 4.0)
    first_random = 2 * min(2, n // 2)
    kind = np.array(["constant"] * n, dtype=object)
    for i in range(first_random, n):
        kind[i] = ("constant", "turning", "stop_and_go")[(i - first_random) % 3]
    vx, vy = speed * np.cos(heading), speed * np.sin(heading)
    # Stop-and-go: frames left in the current phase, and whether it is a stop.
    phase_left = rng.integers(30, 120, n)
    stopped = np.zeros(n, bool)

    boxes = np.zeros((frames, n, 4))
    speed_px = np.zeros((frames, n))
    for t in range(frames):
        if t > 0:
            for i in np.flatnonzero(kind == "turning"):
                heading_i = math.atan2(vy[i], vx[i]) + rng.normal(0.0, 0.06)
                speed_i = float(np.clip(math.hypot(vx[i], vy[i]) + rng.normal(0.0, 0.15),
                                        0.5, 5.0))
                vx[i], vy[i] = speed_i * math.cos(heading_i), speed_i * math.sin(heading_i)
            for i in np.flatnonzero(kind == "stop_and_go"):
                phase_left[i] -= 1
                if phase_left[i] <= 0:
                    stopped[i] = not stopped[i]
                    phase_left[i] = rng.integers(20, 46) if stopped[i] else rng.integers(40, 120)
            step_x = np.where(stopped, 0.0, vx)
            step_y = np.where(stopped, 0.0, vy)
            cx, cy = cx + step_x, cy + step_y
            speed_px[t] = np.hypot(step_x, step_y)
            # Bounce off the borders: the box stays fully inside the image.
            for c, v, half, limit in ((cx, vx, w / 2, width), (cy, vy, h / 2, height)):
                low, high = c < half, c > limit - half
                c[low] = 2 * half[low] - c[low]
                c[high] = 2 * (limit - half[high]) - c[high]
                v[low | high] *= -1.0
        boxes[t] = np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), axis=1)

    visibility = np.stack([_visibility(boxes[t], depth, cfg.occluder_xyxy)
                           for t in range(frames)])
    detected = np.zeros((frames, n), bool)
    dropped = np.zeros((frames, n), bool)
    detections, detection_object = [], []
    for t in range(frames):
        visible = visibility[t] >= cfg.min_visible
        dropped[t] = visible & (rng.random(n) < cfg.drop_rate)
        detected[t] = visible & ~dropped[t]
        idx = np.flatnonzero(detected[t])
        det_boxes = boxes[t, idx] + rng.normal(0.0, cfg.noise_px, (len(idx), 4))
        scores = 0.3 + 0.7 * rng.uniform(0.75, 1.0, len(idx)) * visibility[t, idx] ** 2
        hard = rng.random(len(idx)) < cfg.hard_rate
        scores[hard] = rng.uniform(0.3, 0.5, int(hard.sum()))
        num_fp = rng.poisson(cfg.false_positives_per_frame)
        fp_w = rng.uniform(40.0, 80.0, num_fp)
        fp_h = fp_w * rng.uniform(1.8, 2.4, num_fp)
        fp_x = rng.uniform(0.0, width - fp_w)
        fp_y = rng.uniform(0.0, height - fp_h)
        fp_boxes = np.stack((fp_x, fp_y, fp_x + fp_w, fp_y + fp_h), axis=1)
        all_boxes = np.concatenate((det_boxes, fp_boxes))
        all_scores = np.clip(np.concatenate((scores, rng.uniform(0.3, 0.65, num_fp))), 0.3, 1.0)
        objects = np.concatenate((idx, np.full(num_fp, -1))).astype(np.int64)
        order = rng.permutation(len(all_scores))
        detections.append(Detections(all_boxes[order], all_scores[order],
                                     np.zeros(len(order), np.int64)))
        detection_object.append(objects[order])
    return SimSequence(cfg, seed, boxes, visibility, speed_px, detected, dropped, detections,
                       detection_object)


def _visibility(boxes_xyxy: np.ndarray, depth: np.ndarray,
                occluder_xyxy: Sequence[float], step_px: float = 2.0) -> np.ndarray:
    """Fraction of each box not covered by nearer boxes or the occluder.

    Rasterised on a ``step_px`` grid inside each box, because the covered area
    is a union of rectangles (overlapping occluders must not count twice).
    """
    out = np.ones(len(boxes_xyxy))
    for i, (x1, y1, x2, y2) in enumerate(boxes_xyxy):
        xs = x1 + (np.arange(max(1, int((x2 - x1) / step_px))) + 0.5) * step_px
        ys = y1 + (np.arange(max(1, int((y2 - y1) / step_px))) + 0.5) * step_px
        covered = np.zeros((len(ys), len(xs)), bool)
        occluders = [occluder_xyxy] + [boxes_xyxy[j] for j in np.flatnonzero(depth < depth[i])]
        for ox1, oy1, ox2, oy2 in occluders:
            in_x = (xs >= ox1) & (xs < ox2)
            in_y = (ys >= oy1) & (ys < oy2)
            covered |= in_y[:, None] & in_x[None, :]
        out[i] = 1.0 - covered.mean()
    return out


# ------------------------------------------------------------------ sequence properties

def _runs(mask: np.ndarray) -> List[Tuple[int, int]]:
    """``(start, length)`` of each run of True in a 1-D boolean array."""
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e - s)) for s, e in zip(edges[::2], edges[1::2])]


def sequence_properties(seq: SimSequence) -> Dict[str, Any]:
    """What happens in ``seq``: the events the sequence is meant to contain.

    ``crossings``: object pairs whose horizontal order swaps while their boxes
    overlap. ``stops``: runs of >= 10 frames without motion. ``occlusions``:
    runs of >= 3 hidden frames (visibility below ``min_visible``) after an
    object was seen, split by cause (another object vs the pillar only), and
    their median length.
    ``drop_rate``: dropped / visible object-frames. ``false_positives``: total.
    """
    cfg = seq.config
    boxes = seq.boxes_xyxy
    centre_x = (boxes[..., 0] + boxes[..., 2]) / 2
    crossings = 0
    n = cfg.num_objects
    for i in range(n):
        for j in range(i + 1, n):
            side = np.sign(centre_x[:, i] - centre_x[:, j])
            swap = np.flatnonzero(side[1:] * side[:-1] < 0) + 1
            overlap = [t for t in swap
                       if iou_matrix(boxes[t, i:i + 1], boxes[t, j:j + 1])[0, 0] > 0.0]
            crossings += len(overlap)
    stops = sum(len([r for r in _runs(seq.speed_px[1:, i] < 1e-9) if r[1] >= 10])
                for i in range(n))
    by_object, by_pillar, hidden_frames = 0, 0, []
    pillar_only = np.stack([_visibility(boxes[t], np.full(n, np.inf), cfg.occluder_xyxy)
                            for t in range(cfg.num_frames)])
    for i in range(n):
        for start, length in _runs(~seq.visible[:, i]):
            if start == 0 or length < 3:
                continue
            hidden_frames.append(length)
            hidden_by_pillar = (pillar_only[start:start + length, i] < cfg.min_visible).all()
            by_pillar += int(hidden_by_pillar)
            by_object += int(not hidden_by_pillar)
    visible = int(seq.visible.sum())
    return {"crossings": crossings, "stops": stops,
            "occlusions": by_object + by_pillar, "occlusions_by_objects": by_object,
            "occlusions_by_pillar": by_pillar,
            "median_hidden_frames": float(np.median(hidden_frames)) if hidden_frames else 0.0,
            "drop_rate": float(seq.dropped.sum()) / max(visible, 1),
            "false_positives": int(sum(int(fp.sum()) for fp in seq.false_positive)),
            "visible_object_frames": visible}


# ------------------------------------------------------------------ trackers

def reference_parameters(name: str, config: TrackerConfig) -> Dict[str, Any]:
    """``trackers`` constructor arguments that match ``config`` as closely as they can.

    Both references: activation = ``new_track_thresh``, consecutive frames =
    ``min_hits``, match IoU = ``match_iou`` (they have one IoU for every
    pass), the same lost-track time (their buffer counts 30 FPS frames) and
    the same nominal frame rate for the Kalman step. ByteTrack also splits
    high and low detections at ``high_thresh``.
    """
    buffer = round(config.max_lost * _REFERENCE_BUFFER_FPS / config.frame_rate_hz)
    common = {"lost_track_buffer": int(buffer), "frame_rate": config.frame_rate_hz,
              "track_activation_threshold": config.new_track_thresh,
              "minimum_consecutive_frames": config.min_hits,
              "minimum_iou_threshold": config.match_iou}
    if name == "sort":
        return common
    if name == "bytetrack":
        return dict(common, high_conf_det_threshold=config.high_thresh)
    raise ConfigError(f"unknown reference tracker {name!r}; known: sort, bytetrack")


def reference_min_score(name: str, config: TrackerConfig) -> float:
    """Lowest detection score each tracker is given.

    Ours and ByteTrack get everything above ``low_thresh`` (ByteTrack has no
    lower cut of its own); SORT, which has one association pass, gets the
    confident detections above ``high_thresh`` as in the ByteTrack paper's
    SORT baseline.
    """
    return config.high_thresh if name == "sort" else config.low_thresh


def run_tracker(name: str, detections: Sequence[Detections], stamps_s: Sequence[float],
                config: Optional[TrackerConfig] = None) -> List[FrameBoxes]:
    """Run tracker ``name`` ('ours', 'sort', 'bytetrack') over a sequence.

    Returns per frame the confirmed tracks matched in that frame (what each
    tracker reports: ours its filtered boxes, the references the detection
    boxes they matched).
    """
    config = config or TrackerConfig()
    if len(detections) != len(stamps_s):
        raise ConfigError(f"{len(detections)} detection frames but {len(stamps_s)} stamps")
    min_score = reference_min_score(name, config)
    out: List[FrameBoxes] = []
    if name == "ours":
        tracker = Tracker(config)
        for dets, stamp in zip(detections, stamps_s):
            tracks = tracker.update(dets.select(dets.scores >= min_score), float(stamp))
            out.append(FrameBoxes(tracks.track_ids, tracks.boxes_xyxy))
        return out
    import supervision as sv
    import trackers

    cls = {"sort": trackers.SORTTracker, "bytetrack": trackers.ByteTrackTracker}.get(name)
    if cls is None:
        raise ConfigError(f"unknown tracker {name!r}; known: {', '.join(TRACKER_NAMES)}")
    tracker = cls(**reference_parameters(name, config))
    for dets, stamp in zip(detections, stamps_s):
        dets = dets.select(dets.scores >= min_score)
        result = tracker.update(sv.Detections(xyxy=dets.boxes_xyxy.reshape(-1, 4),
                                              confidence=dets.scores, class_id=dets.class_ids),
                                timestamp=float(stamp))
        ids = np.asarray(result.tracker_id, dtype=np.int64)
        keep = ids >= 0  # -1: not (yet) a confirmed track
        out.append(FrameBoxes(ids[keep], np.asarray(result.xyxy).reshape(-1, 4)[keep]))
    return out


# ------------------------------------------------------------------ metrics

def mot_metrics(ground_truth: Sequence[FrameBoxes], hypotheses: Sequence[FrameBoxes],
                iou_threshold: float = MATCH_IOU) -> Dict[str, float]:
    """CLEAR-MOT and identity metrics (``motmetrics``) of ``hypotheses`` vs ``ground_truth``.

    The distance is ``1 - IoU``, infeasible below ``iou_threshold``; computed
    here because ``motmetrics.distances.iou_matrix`` 1.4 calls ``np.asfarray``,
    which numpy 2 removed.
    """
    import motmetrics as mm

    if len(ground_truth) != len(hypotheses):
        raise ConfigError(f"{len(ground_truth)} ground-truth frames but {len(hypotheses)} "
                          "hypothesis frames")
    acc = mm.MOTAccumulator(auto_id=True)
    for gt, hyp in zip(ground_truth, hypotheses):
        dist = 1.0 - iou_matrix(gt.boxes_xyxy, hyp.boxes_xyxy)
        dist[dist > 1.0 - iou_threshold] = np.nan
        acc.update(gt.ids.tolist(), hyp.ids.tolist(), dist)
    names = {"mota": "mota", "idf1": "idf1", "motp": "motp", "id_switches": "num_switches",
             "fragmentations": "num_fragmentations", "mostly_tracked": "mostly_tracked",
             "partially_tracked": "partially_tracked", "mostly_lost": "mostly_lost",
             "gt_ids": "num_unique_objects", "false_positives": "num_false_positives",
             "misses": "num_misses", "precision": "precision", "recall": "recall"}
    summary = mm.metrics.create().compute(acc, metrics=list(names.values()), name="seq")
    row = summary.iloc[0]
    out: Dict[str, float] = {}
    for key, column in names.items():
        value = float(row[column])
        out[key] = int(value) if key not in ("mota", "idf1", "motp", "precision",
                                             "recall") else value
    out["hyp_ids"] = len({int(i) for frame in hypotheses for i in frame.ids})
    return out


def track_stats(frames: Sequence[FrameBoxes]) -> Dict[str, float]:
    """Boxes per frame, distinct tracks, and frames each track was reported in."""
    lengths: Dict[int, int] = defaultdict(int)
    for frame in frames:
        for track_id in frame.ids.tolist():
            lengths[track_id] += 1
    values = np.array(list(lengths.values()), dtype=np.float64)
    return {"frames": len(frames),
            "boxes_per_frame": float(np.mean([len(f) for f in frames])) if frames else 0.0,
            "tracks": len(lengths),
            "mean_track_length_frames": float(values.mean()) if len(values) else 0.0,
            "median_track_length_frames": float(np.median(values)) if len(values) else 0.0}


def identity_agreement(ours: Sequence[FrameBoxes], reference: Sequence[FrameBoxes],
                       iou_threshold: float = MATCH_IOU) -> Dict[str, float]:
    """How two trackers' identities agree, with no ground truth.

    Per frame the boxes are matched one-to-one (Hungarian, IoU >=
    ``iou_threshold``). ``reference_fragmented``: reference tracks matched by
    more than one of our ids (our tracker split them); ``ours_switched``: our
    tracks matched by more than one reference id (our tracker merged or
    swapped them). ``*_extra_ids`` sums ``ids - 1`` over those tracks;
    ``matched_fraction_*``: share of each side's boxes that found a partner.
    """
    if len(ours) != len(reference):
        raise ConfigError(f"{len(ours)} frames of ours but {len(reference)} of the reference")
    ref_to_ours: Dict[int, set] = defaultdict(set)
    ours_to_ref: Dict[int, set] = defaultdict(set)
    matched, n_ours, n_ref = 0, 0, 0
    for a, b in zip(ours, reference):
        n_ours += len(a)
        n_ref += len(b)
        pairs, _, _ = linear_assignment(1.0 - iou_matrix(a.boxes_xyxy, b.boxes_xyxy),
                                        1.0 - iou_threshold)
        matched += len(pairs)
        for row, col in pairs:
            ref_to_ours[int(b.ids[col])].add(int(a.ids[row]))
            ours_to_ref[int(a.ids[row])].add(int(b.ids[col]))
    return {"reference_fragmented": sum(len(s) > 1 for s in ref_to_ours.values()),
            "reference_extra_ids": sum(len(s) - 1 for s in ref_to_ours.values()),
            "ours_switched": sum(len(s) > 1 for s in ours_to_ref.values()),
            "ours_extra_ids": sum(len(s) - 1 for s in ours_to_ref.values()),
            "reference_tracks_matched": len(ref_to_ours), "our_tracks_matched": len(ours_to_ref),
            "matched_fraction_ours": matched / n_ours if n_ours else 0.0,
            "matched_fraction_reference": matched / n_ref if n_ref else 0.0}


# ------------------------------------------------------------------ evaluations

def evaluate_sim(seeds: Sequence[int], sim_config: Optional[SimConfig] = None,
                 tracker_config: Optional[TrackerConfig] = None) -> Dict[str, Any]:
    """Every tracker on the simulated sequence of each seed; per seed and the mean."""
    sim_config = sim_config or SimConfig()
    tracker_config = tracker_config or TrackerConfig(frame_rate_hz=sim_config.rate_hz)
    per_seed = []
    for seed in seeds:
        seq = simulate_sequence(seed, sim_config)
        gt = seq.ground_truth()
        entry: Dict[str, Any] = {"seed": seed, "properties": sequence_properties(seq),
                                 "trackers": {}}
        for name in TRACKER_NAMES:
            hyp = run_tracker(name, seq.detections, seq.stamps_s, tracker_config)
            entry["trackers"][name] = mot_metrics(gt, hyp)
        per_seed.append(entry)
    mean = {name: {key: float(np.mean([s["trackers"][name][key] for s in per_seed]))
                   for key in per_seed[0]["trackers"][name]} for name in TRACKER_NAMES}
    return {"sim_config": asdict(sim_config), "tracker_config": asdict(tracker_config),
            "reference_parameters": {n: reference_parameters(n, tracker_config)
                                     for n in ("sort", "bytetrack")},
            "per_seed": per_seed, "mean": mean}


def resolve_asset(name: str) -> Path:
    """``name`` as given, else in ``$ROBOT_VISION_ASSETS`` or ``../shared/assets``."""
    candidates = [Path(name)]
    if os.environ.get("ROBOT_VISION_ASSETS"):
        candidates.append(Path(os.environ["ROBOT_VISION_ASSETS"]) / name)
    candidates += [Path.cwd().parent / "shared" / "assets" / name,
                   Path(__file__).resolve().parents[2].parent / "shared" / "assets" / name]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"cannot find {name!r} (looked in: {', '.join(map(str, candidates))}); "
                      "give a path or set ROBOT_VISION_ASSETS to the assets folder")


@dataclass
class VideoDetections:
    """A real detector's output on every frame of a video, and each frame's digest."""

    detections: List[Detections]
    fps: float
    frame_digests: List[str] = field(default_factory=list)
    detector_ms: List[float] = field(default_factory=list)


def frame_digest(rgb: np.ndarray) -> str:
    """Content digest of an RGB frame: identifies a published frame exactly."""
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=16).hexdigest()


def detect_video(video: str, model: str, score_threshold: float = 0.3,
                 max_frames: Optional[int] = None) -> VideoDetections:
    """Run the ONNX detector ``model`` once on every frame of ``video`` (RGB, as
    ``video_camera`` publishes it)."""
    from ..core.video_source import VideoSource
    from ..models.registry import create_model

    detector = create_model("onnx", kind="detector", path=str(resolve_asset(model)),
                            score_threshold=score_threshold)
    source = VideoSource(str(resolve_asset(video)))
    out = VideoDetections([], source.fps)
    while max_frames is None or len(out.detections) < max_frames:
        rgb = source.read()
        if rgb is None:
            break
        t0 = time.perf_counter()
        out.detections.append(detector.detect(rgb))
        out.detector_ms.append((time.perf_counter() - t0) * 1e3)
        out.frame_digests.append(frame_digest(rgb))
    if not out.detections:
        raise ConfigError(f"{video} has no readable frame")
    return out


def compare_on_frames(detections: Sequence[Detections], stamps_s: Sequence[float],
                      config: TrackerConfig) -> Dict[str, Any]:
    """Our tracker and the reference ByteTrack on identical detections: stats and agreement."""
    ours = run_tracker("ours", detections, stamps_s, config)
    ref = run_tracker("bytetrack", detections, stamps_s, config)
    return {"detections_per_frame": float(np.mean([len(d) for d in detections])),
            "ours": track_stats(ours), "reference_bytetrack": track_stats(ref),
            "agreement": identity_agreement(ours, ref), "_frames": (ours, ref)}


def evaluate_video(video: str, model: str, score_threshold: float = 0.3,
                   max_frames: Optional[int] = None) -> Dict[str, Any]:
    """Offline: detector once per frame, then ours vs the reference ByteTrack."""
    vd = detect_video(video, model, score_threshold, max_frames)
    config = TrackerConfig(frame_rate_hz=vd.fps)  # the node uses target_fps = the video rate
    stamps = np.arange(len(vd.detections)) / vd.fps
    result = compare_on_frames(vd.detections, stamps, config)
    result.pop("_frames")
    result.update({"video": video, "model": model, "score_threshold": score_threshold,
                   "fps": vd.fps, "frames": len(vd.detections),
                   "detector_ms_median": float(np.median(vd.detector_ms)),
                   "tracker_config": asdict(config),
                   "reference_parameters": reference_parameters("bytetrack", config)})
    return result


# ------------------------------------------------------------------ speed

SPEED_DETECTORS = (("onnx", 10), ("ssdlite320_mobilenet_v3_large", 10),
                   ("fasterrcnn_mobilenet_v3_large_320_fpn", 10),
                   ("retinanet_resnet50_fpn_v2", 3), ("fcos_resnet50_fpn", 3))


def _frame_640x480(video: str) -> np.ndarray:
    import cv2

    from ..core.video_source import VideoSource

    try:
        rgb = VideoSource(str(resolve_asset(video))).read()
    except VisionError:
        rgb = None
    if rgb is None:  # no footage: a textured synthetic frame
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return cv2.resize(rgb, (640, 480), interpolation=cv2.INTER_AREA)


def time_detectors(model: str, video: str,
                   detectors: Sequence[Tuple[str, int]] = SPEED_DETECTORS) -> Dict[str, Any]:
    """Median ms per 640x480 frame of each detector at its native input (random
    weights for torchvision's), after one warm-up run."""
    import torch

    from ..models.registry import create_model

    frame = _frame_640x480(video)
    out: Dict[str, Any] = {}
    for name, repeats in detectors:
        if name == "onnx":
            detector = create_model("onnx", kind="detector", path=str(resolve_asset(model)))
        else:
            detector = create_model(name, kind="detector", weights="")
        detector.detect(frame)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            detector.detect(frame)
            times.append((time.perf_counter() - t0) * 1e3)
        out[name] = {"median_ms": float(np.median(times)), "min_ms": float(min(times)),
                     "runs": repeats, "input_hw": list(getattr(detector, "input_hw", ()))
                     or None, "torch_threads": torch.get_num_threads()}
        del detector
    return out


def time_tracker(num_objects: int = 50, updates: int = 200, warmup: int = 20,
                 seed: int = 0) -> Dict[str, float]:
    """Median ms of one :meth:`Tracker.update` with ``num_objects`` objects in view.

    Uses the simulated sequence (a larger canvas so the objects are not all
    hidden, no pillar) for realistic crossings and misses.
    """
    sim = SimConfig(num_frames=updates + warmup, num_objects=num_objects, width_px=3840,
                    height_px=2160, occluder_xyxy=(0.0, 0.0, 0.0, 0.0))
    seq = simulate_sequence(seed, sim)
    tracker = Tracker(TrackerConfig(frame_rate_hz=sim.rate_hz))
    times, active = [], []
    for t, (dets, stamp) in enumerate(zip(seq.detections, seq.stamps_s)):
        t0 = time.perf_counter()
        tracks = tracker.update(dets, float(stamp))
        dt_ms = (time.perf_counter() - t0) * 1e3
        if t >= warmup:
            times.append(dt_ms)
            active.append(len(tracks))
    return {"objects": num_objects, "updates": len(times),
            "median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "mean_reported_tracks": float(np.mean(active)),
            "mean_detections": float(np.mean([len(d) for d in seq.detections[warmup:]]))}


# ------------------------------------------------------------------ printing and CLI

def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    line = lambda values: "  ".join(str(v).rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


SIM_COLUMNS = ("mota", "idf1", "id_switches", "fragmentations", "mostly_tracked",
               "mostly_lost", "hyp_ids", "gt_ids")


def format_sim(result: Dict[str, Any]) -> str:
    rows = []
    for entry in result["per_seed"]:
        for name in TRACKER_NAMES:
            m = entry["trackers"][name]
            rows.append([entry["seed"], name] + [m[c] for c in SIM_COLUMNS])
    for name in TRACKER_NAMES:
        rows.append(["mean", name] + [result["mean"][name][c] for c in SIM_COLUMNS])
    props = _table(("seed", "crossings", "stops", "occl_objects", "occl_pillar",
                    "hidden_frames_median", "drop_rate", "false_pos"),
                   [[e["seed"], e["properties"]["crossings"], e["properties"]["stops"],
                     e["properties"]["occlusions_by_objects"],
                     e["properties"]["occlusions_by_pillar"],
                     e["properties"]["median_hidden_frames"], e["properties"]["drop_rate"],
                     e["properties"]["false_positives"]] for e in result["per_seed"]])
    return (props + "\n\n" + _table(("seed", "tracker") + SIM_COLUMNS, rows))


def format_comparison(result: Dict[str, Any], ours_label: str = "ours") -> str:
    stats_cols = ("frames", "boxes_per_frame", "tracks", "mean_track_length_frames",
                  "median_track_length_frames")
    rows = [[ours_label] + [result["ours"][c] for c in stats_cols],
            ["ref_bytetrack"] + [result["reference_bytetrack"][c] for c in stats_cols]]
    agreement = result["agreement"]
    text = (f"detections per frame: {result['detections_per_frame']:.2f}\n"
            + _table(("tracker",) + stats_cols, rows) + "\n"
            + f"identity agreement ({ours_label} vs reference ByteTrack, IoU >= {MATCH_IOU}):\n"
            + _table(tuple(agreement), [list(agreement.values())]))
    return text


def format_speed(result: Dict[str, Any]) -> str:
    det_rows = [[n, v["input_hw"], v["runs"], v["median_ms"], v["min_ms"]]
                for n, v in result["detectors"].items()]
    t = result["tracker"]
    return (_table(("detector (640x480 frame)", "input_hw", "runs", "median_ms", "min_ms"),
                   det_rows) + "\n\n"
            + _table(("tracker", "objects", "updates", "median_ms", "p90_ms", "reported"),
                     [["ours", t["objects"], t["updates"], t["median_ms"], t["p90_ms"],
                       t["mean_reported_tracks"]]]))


def tracker_config_from(assignments: Sequence[str], rate_hz: float) -> TrackerConfig:
    """TrackerConfig at ``rate_hz`` with ``KEY=VALUE`` overrides (YAML-typed values)."""
    import yaml

    values: Dict[str, Any] = {"frame_rate_hz": rate_hz}
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        values[key.strip()] = yaml.safe_load(text)
    return TrackerConfig.from_mapping(values)


def write_json(result: Dict[str, Any], path: Optional[str]) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2, default=float))
        print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m robot_vision_ros.tools.eval_tracking",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("sim", help="simulated MOT sequence with ground truth")
    sim.add_argument("--seed", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                     help="one or more seeds (default 0 1 2 3 4)")
    sim.add_argument("--frames", type=int, default=SimConfig.num_frames)
    sim.add_argument("--objects", type=int, default=SimConfig.num_objects)
    sim.add_argument("--drop", type=float, default=SimConfig.drop_rate)
    sim.add_argument("--noise-px", type=float, default=SimConfig.noise_px)
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a TrackerConfig field (repeatable), e.g. max_lost=20; "
                          "the references follow where they have the same knob")
    sim.add_argument("--json")
    video = sub.add_parser("video", help="real detector on a video, ours vs reference ByteTrack")
    video.add_argument("--video", default="vtest.avi")
    video.add_argument("--model", default="ssdlite_person.onnx")
    video.add_argument("--score", type=float, default=0.3)
    video.add_argument("--max-frames", type=int)
    video.add_argument("--json")
    speed = sub.add_parser("speed", help="time per frame of the detectors and the tracker")
    speed.add_argument("--video", default="vtest.avi", help="a frame of it is the input")
    speed.add_argument("--model", default="ssdlite_person.onnx")
    speed.add_argument("--objects", type=int, default=50)
    speed.add_argument("--json")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sim":
            sim = SimConfig(num_frames=args.frames, num_objects=args.objects,
                            drop_rate=args.drop, noise_px=args.noise_px)
            result = evaluate_sim(args.seed, sim, tracker_config_from(args.set, sim.rate_hz))
            print(format_sim(result))
        elif args.command == "video":
            result = evaluate_video(args.video, args.model, args.score, args.max_frames)
            print(f"{result['video']}: {result['frames']} frames at {result['fps']:g} fps, "
                  f"detector median {result['detector_ms_median']:.1f} ms")
            print(format_comparison(result))
        else:
            result = {"tracker": time_tracker(args.objects),
                      "detectors": time_detectors(args.model, args.video)}
            print(format_speed(result))
    except VisionError as exc:
        print(f"eval_tracking: {exc}", file=sys.stderr)
        return 2
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
