"""Validated parameters of the ByteTrack-style tracker (``tracking.*``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any, Mapping

from ..core.errors import ConfigError


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker thresholds; every value is checked in ``__post_init__``.

    Score thresholds split detections as ByteTrack does: ``score >= high_thresh``
    is a high detection (first pass, may start tracks), ``low_thresh <= score <
    high_thresh`` a low one (second pass only, keeps tracks alive), lower scores
    are ignored. The ``*_iou`` values are the smallest overlap a pair may have to
    be matched, so the largest accepted assignment cost is ``1 - *_iou``.
    """

    high_thresh: float = 0.5
    low_thresh: float = 0.1
    new_track_thresh: float = 0.6
    # First pass (high detections vs tracked + lost tracks): minimum IoU, or
    # IoU * detection score when fuse_score is on (ByteTrack's MOT17 setting; off by
    # default: on vtest.avi it fragmented more tracks than it joined).
    match_iou: float = 0.2
    # Second pass (low detections vs tracks left unmatched): minimum plain IoU.
    second_match_iou: float = 0.5
    # Third pass (tentative tracks vs high detections left over): minimum IoU.
    unconfirmed_match_iou: float = 0.3
    fuse_score: bool = False
    # Second pass also offers lost tracks to low-score detections (see tracker.py).
    low_score_revives_lost: bool = True
    # A track is reported after this many matched updates (the birth counts).
    min_hits: int = 3
    # Tracks born on the first update after start or reset() are reported at
    # once (ByteTrack's frame-1 rule): nothing to confirm against yet.
    confirm_first_frame: bool = True
    # Nominal frames a track may go unmatched and still be re-found.
    max_lost: int = 10
    class_aware: bool = True
    # Nominal rate that converts max_lost and the filter's per-frame noise to time.
    frame_rate_hz: float = 30.0

    def __post_init__(self) -> None:
        for name in ("high_thresh", "low_thresh", "new_track_thresh", "match_iou",
                     "second_match_iou", "unconfirmed_match_iou", "frame_rate_hz"):
            object.__setattr__(self, name, _real(name, getattr(self, name)))
        for name in ("min_hits", "max_lost"):
            _integer(name, getattr(self, name))
        for name in ("fuse_score", "low_score_revives_lost", "confirm_first_frame", "class_aware"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"TrackerConfig.{name} must be true or false, "
                                  f"got {getattr(self, name)!r}")
        for name in ("high_thresh", "low_thresh", "new_track_thresh"):
            _in_range(name, getattr(self, name), 0.0, 1.0, low_open=False)
        for name in ("match_iou", "second_match_iou", "unconfirmed_match_iou"):
            _in_range(name, getattr(self, name), 0.0, 1.0, low_open=True)
        if not self.low_thresh < self.high_thresh:
            raise ConfigError(f"TrackerConfig.low_thresh ({self.low_thresh}) must be below "
                              f"high_thresh ({self.high_thresh})")
        if self.new_track_thresh < self.high_thresh:
            raise ConfigError(f"TrackerConfig.new_track_thresh ({self.new_track_thresh}) must "
                              f"be at least high_thresh ({self.high_thresh}): only high "
                              "detections can start tracks")
        if self.min_hits < 1:
            raise ConfigError(f"TrackerConfig.min_hits must be >= 1, got {self.min_hits}")
        if self.max_lost < 0:
            raise ConfigError(f"TrackerConfig.max_lost must be >= 0, got {self.max_lost}")
        if not self.frame_rate_hz > 0.0:
            raise ConfigError(f"TrackerConfig.frame_rate_hz must be > 0, got {self.frame_rate_hz}")

    @property
    def frame_period_s(self) -> float:
        """Duration of one nominal frame in seconds."""
        return 1.0 / self.frame_rate_hz

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> "TrackerConfig":
        """Build from a parameter mapping (e.g. ``tracking.*``), rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConfigError(f"unknown tracker parameter(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**dict(params))


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"TrackerConfig.{name} must be a finite number, got {value!r}")
    return float(value)


def _integer(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigError(f"TrackerConfig.{name} must be an integer, got {value!r}")


def _in_range(name: str, value: float, low: float, high: float, low_open: bool) -> None:
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"TrackerConfig.{name} must be in {bracket}{low}, {high}], got {value}")
