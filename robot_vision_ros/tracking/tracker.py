"""ByteTrack multi-object tracker over :class:`Detections`, driven by time stamps.

Association per update (Zhang et al., "ByteTrack", ECCV 2022):

1. high-score detections vs confirmed tracks, tracked and lost (IoU with the
   Kalman-predicted boxes, optionally fused with the detection score);
2. low-score detections vs the confirmed tracks still unmatched (with
   ``low_score_revives_lost``, the default, lost ones too: an object coming
   out of an occlusion is partly hidden and scores low, and re-finding its old
   track beats starting a new id); they never start tracks;
3. tentative tracks vs the high detections left over; a tentative track that
   misses once is dropped;
4. high detections still unmatched with ``score >= new_track_thresh`` start
   tentative tracks, reported after ``min_hits`` matched updates.

Time comes from the stamps, not from counting calls: the filter predicts over
the real ``dt``, so the detector may run on every n-th frame, skip frames or run
at an irregular rate. Reported boxes of matched tracks are the filter's
corrected boxes (smoother than the raw detection, and continuous with the
predicted boxes published between detector runs); the score is the matched
detection's.

All track state lives in parallel numpy arrays, one row per track, so that
predict, cost matrices and the filter correction are a few batched calls.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from ..core.detections import Detections, Tracks
from ..core.errors import ConfigError, InputError
from .assignment import iou_matrix, linear_assignment
from .config import TrackerConfig
from .kalman import STATE_DIM, ConstantVelocityKalman, cxcywh_to_xyxy, xyxy_to_cxcywh

# Stamp jitter tolerated when converting a time gap to nominal frames.
_FRAME_TOLERANCE = 0.5


class Tracker:
    """Multi-object tracker; ids start at 1 and are unique per instance.

    ``update(detections, stamp_s)`` after each detector run returns the
    confirmed tracks matched in that frame; ``predict(stamp_s)`` for frames the
    detector skipped returns the same tracks extrapolated to ``stamp_s`` with
    ``is_predicted=True``, without changing the filter state. Stamps must not
    go backwards; call :meth:`reset` after a bag restart or simulator reset.

    Lifetime: a track may go ``max_lost`` nominal frames without a match and
    still be re-found by the next detection; an update later than that
    deletes it.
    """

    def __init__(self, config: Optional[TrackerConfig] = None) -> None:
        if config is None:
            config = TrackerConfig()
        if not isinstance(config, TrackerConfig):
            raise ConfigError(f"Tracker needs a TrackerConfig, got {type(config).__name__}")
        self.config = config
        self._kf = ConstantVelocityKalman()
        self._next_id = 1
        self.reset()

    def reset(self) -> None:
        """Drop all tracks and the stamp history. Ids keep counting up, so an id
        seen before the reset never names a different object after it."""
        self._mean = np.zeros((0, STATE_DIM))
        self._cov = np.zeros((0, STATE_DIM, STATE_DIM))
        self._track_ids = np.zeros(0, np.int64)
        self._class_ids = np.zeros(0, np.int64)
        self._scores = np.zeros(0, np.float32)
        self._hits = np.zeros(0, np.int64)
        self._confirmed = np.zeros(0, bool)
        self._lost = np.zeros(0, bool)
        self._last_match_s = np.zeros(0)
        self._filter_stamp_s: Optional[float] = None  # time the filter state refers to
        self._last_stamp_s: Optional[float] = None  # newest stamp seen (update or predict)
        self._num_updates = 0

    def __len__(self) -> int:
        """Tracks held: tentative, tracked and lost (not yet deleted)."""
        return len(self._track_ids)

    @property
    def num_active(self) -> int:
        """Confirmed tracks matched at the last update: what ``update`` reported."""
        return int(np.count_nonzero(self._confirmed & ~self._lost))

    def update(self, detections: Detections, stamp_s: float) -> Tracks:
        """Associate one frame's detections; return confirmed tracks matched now."""
        boxes, scores, class_ids = _checked_detections(detections)
        stamp_s = self._check_stamp(stamp_s)
        cfg = self.config

        self._prune(stamp_s, slack_frames=1.0)  # could not be re-found even at nominal rate
        self._predict_filter(stamp_s)
        first_update = self._num_updates == 0
        self._num_updates += 1

        has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        usable = has_area & (scores >= cfg.low_thresh)
        high = np.flatnonzero(usable & (scores >= cfg.high_thresh))
        low = np.flatnonzero(usable & (scores < cfg.high_thresh))
        iou = iou_matrix(cxcywh_to_xyxy(self._mean[:, :4]), boxes)

        # Pass 1: high detections vs confirmed tracks (tracked and lost).
        pool = np.flatnonzero(self._confirmed)
        m1, rest_rows, rest_cols = linear_assignment(
            self._cost(iou, pool, high, scores, class_ids, cfg.fuse_score), 1.0 - cfg.match_iou)
        rest_tracks = pool[rest_rows]
        rest_high = high[rest_cols]

        # Pass 2: low detections vs the remaining tracks (lost ones only if configured).
        tracked_rest = (rest_tracks if cfg.low_score_revives_lost
                        else rest_tracks[~self._lost[rest_tracks]])
        m2, missed_rows, _ = linear_assignment(
            self._cost(iou, tracked_rest, low, scores, class_ids, False),
            1.0 - cfg.second_match_iou)

        # Pass 3: tentative tracks vs high detections nobody took.
        tentative = np.flatnonzero(~self._confirmed)
        m3, failed_rows, new_cols = linear_assignment(
            self._cost(iou, tentative, rest_high, scores, class_ids, cfg.fuse_score),
            1.0 - cfg.unconfirmed_match_iou)

        track_rows = np.concatenate((pool[m1[:, 0]], tracked_rest[m2[:, 0]], tentative[m3[:, 0]]))
        det_rows = np.concatenate((high[m1[:, 1]], low[m2[:, 1]], rest_high[m3[:, 1]]))
        self._correct(track_rows, boxes[det_rows], scores[det_rows], class_ids[det_rows], stamp_s)
        self._lost[tracked_rest[missed_rows]] = True
        matched = np.zeros(len(self._track_ids), bool)
        matched[track_rows] = True

        keep = np.ones(len(self._track_ids), bool)
        keep[tentative[failed_rows]] = False
        keep &= ~(self._lost & (self._age_frames(stamp_s) > cfg.max_lost + _FRAME_TOLERANCE))
        self._select(keep)
        matched = matched[keep]

        births = rest_high[new_cols]
        births = births[scores[births] >= cfg.new_track_thresh]
        if len(births):
            confirm = cfg.min_hits <= 1 or (cfg.confirm_first_frame and first_update)
            self._add(boxes[births], scores[births], class_ids[births], stamp_s, confirm)
            matched = np.concatenate((matched, np.ones(len(births), bool)))

        report = matched & self._confirmed
        return self._tracks(report, self._mean[report, :4], predicted=False)

    def predict(self, stamp_s: float) -> Tracks:
        """Tracks of the last update extrapolated to ``stamp_s`` (a frame the
        detector skipped), ``is_predicted=True``; the filter state is not changed,
        so the next update still predicts over the whole gap in one step."""
        stamp_s = self._check_stamp(stamp_s)
        if self._filter_stamp_s is None:
            return Tracks.empty()
        dt_frames = (stamp_s - self._filter_stamp_s) * self.config.frame_rate_hz
        report = (self._confirmed & ~self._lost
                  & (self._age_frames(stamp_s) <= self.config.max_lost + _FRAME_TOLERANCE))
        mean = self._mean[report]
        boxes_cxcywh = mean[:, :4] + dt_frames * mean[:, 4:]
        return self._tracks(report, boxes_cxcywh, predicted=True)

    # -- internals -----------------------------------------------------------

    def _check_stamp(self, stamp_s: float) -> float:
        try:
            stamp = float(stamp_s)
        except (TypeError, ValueError):
            raise InputError(f"stamp_s must be a number of seconds, got {stamp_s!r}",
                             reason="bad_stamp") from None
        if not math.isfinite(stamp):
            raise InputError(f"stamp_s must be finite, got {stamp}", reason="bad_stamp")
        if self._last_stamp_s is not None and stamp < self._last_stamp_s:
            raise InputError(
                f"stamp {stamp:.6f} s is before the previous stamp {self._last_stamp_s:.6f} s; "
                "call Tracker.reset() after a bag restart or simulator reset",
                reason="stamp_backwards")
        self._last_stamp_s = stamp
        return stamp

    def _age_frames(self, stamp_s: float) -> np.ndarray:
        """Nominal frames since each track was last matched."""
        return (stamp_s - self._last_match_s) * self.config.frame_rate_hz

    def _prune(self, stamp_s: float, slack_frames: float) -> None:
        limit = self.config.max_lost + slack_frames + _FRAME_TOLERANCE
        self._select(self._age_frames(stamp_s) <= limit)

    def _predict_filter(self, stamp_s: float) -> None:
        if self._filter_stamp_s is not None and len(self._track_ids):
            dt_frames = (stamp_s - self._filter_stamp_s) * self.config.frame_rate_hz
            # As ByteTrack: a lost track keeps its position drift but not its size change.
            self._mean[self._lost, 6:8] = 0.0
            self._mean, self._cov = self._kf.predict(self._mean, self._cov, dt_frames)
        self._filter_stamp_s = stamp_s

    def _cost(self, iou: np.ndarray, track_rows: np.ndarray, det_rows: np.ndarray,
              scores: np.ndarray, class_ids: np.ndarray, fuse: bool) -> np.ndarray:
        """``1 - similarity`` for the given tracks x detections; NaN where classes differ."""
        sim = iou[np.ix_(track_rows, det_rows)]
        if fuse:
            sim = sim * scores[det_rows][None, :]
        cost = 1.0 - sim
        if self.config.class_aware:
            same = self._class_ids[track_rows][:, None] == class_ids[det_rows][None, :]
            cost[~same] = np.nan
        return cost

    def _correct(self, rows: np.ndarray, boxes_xyxy: np.ndarray, scores: np.ndarray,
                 class_ids: np.ndarray, stamp_s: float) -> None:
        if not len(rows):
            return
        self._mean[rows], self._cov[rows] = self._kf.update(
            self._mean[rows], self._cov[rows], xyxy_to_cxcywh(boxes_xyxy))
        self._scores[rows] = scores
        self._class_ids[rows] = class_ids  # changes only when class_aware is off
        self._hits[rows] += 1
        self._lost[rows] = False
        self._last_match_s[rows] = stamp_s
        self._confirmed[rows] |= self._hits[rows] >= self.config.min_hits

    def _add(self, boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
             stamp_s: float, confirmed: bool) -> None:
        n = len(scores)
        mean, cov = self._kf.initiate(xyxy_to_cxcywh(boxes_xyxy))
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        self._mean = np.concatenate((self._mean, mean))
        self._cov = np.concatenate((self._cov, cov))
        self._track_ids = np.concatenate((self._track_ids, ids))
        self._class_ids = np.concatenate((self._class_ids, class_ids))
        self._scores = np.concatenate((self._scores, scores))
        self._hits = np.concatenate((self._hits, np.ones(n, np.int64)))
        self._confirmed = np.concatenate((self._confirmed, np.full(n, confirmed)))
        self._lost = np.concatenate((self._lost, np.zeros(n, bool)))
        self._last_match_s = np.concatenate((self._last_match_s, np.full(n, stamp_s)))

    def _select(self, keep: np.ndarray) -> None:
        if keep.all():
            return
        self._mean, self._cov = self._mean[keep], self._cov[keep]
        self._track_ids, self._class_ids = self._track_ids[keep], self._class_ids[keep]
        self._scores, self._hits = self._scores[keep], self._hits[keep]
        self._confirmed, self._lost = self._confirmed[keep], self._lost[keep]
        self._last_match_s = self._last_match_s[keep]

    def _tracks(self, rows: np.ndarray, boxes_cxcywh: np.ndarray, predicted: bool) -> Tracks:
        n = len(boxes_cxcywh)
        return Tracks(cxcywh_to_xyxy(boxes_cxcywh).astype(np.float32), self._scores[rows],
                      self._class_ids[rows], self._track_ids[rows], np.full(n, predicted))


def _checked_detections(detections: Detections) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (float64), scores, class ids of ``detections``; rejects non-finite values."""
    if not isinstance(detections, Detections):
        raise InputError(f"Tracker.update needs Detections, got {type(detections).__name__}",
                         reason="bad_detections")
    boxes = detections.boxes_xyxy.astype(np.float64)
    scores = detections.scores.astype(np.float64)
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise InputError("detections contain NaN or inf boxes or scores", reason="bad_detections")
    return boxes, scores, detections.class_ids
