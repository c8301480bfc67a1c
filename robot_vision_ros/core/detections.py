"""Typed detection and track tables passed between detector, tracker and node.

Plain numpy, shapes checked at construction (in the spirit of supervision's
``Detections``). Boxes are ``xyxy`` in pixels of the original RGB image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _as(a: np.ndarray, dtype: type, shape_tail: tuple, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(a, dtype=dtype)
    if arr.ndim != 1 + len(shape_tail) or tuple(arr.shape[1:]) != shape_tail:
        raise ValueError(f"{name} must have shape [N, {', '.join(map(str, shape_tail))}]"
                         f", got {arr.shape}")
    return arr


@dataclass(frozen=True)
class Detections:
    """N detections of one frame: ``boxes_xyxy [N,4]`` float32 pixels,
    ``scores [N]`` float32 in 0..1, ``class_ids [N]`` int64."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        boxes = _as(self.boxes_xyxy, np.float32, (4,), "boxes_xyxy")
        scores = _as(self.scores, np.float32, (), "scores")
        class_ids = _as(self.class_ids, np.int64, (), "class_ids")
        if not (len(boxes) == len(scores) == len(class_ids)):
            raise ValueError(f"lengths differ: boxes {len(boxes)}, scores {len(scores)}, "
                             f"class_ids {len(class_ids)}")
        object.__setattr__(self, "boxes_xyxy", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def select(self, mask_or_index: np.ndarray) -> "Detections":
        """Subset by boolean mask or index array."""
        return Detections(self.boxes_xyxy[mask_or_index], self.scores[mask_or_index],
                          self.class_ids[mask_or_index])


@dataclass(frozen=True)
class Tracks:
    """Confirmed tracks of one frame: a :class:`Detections`-like table plus
    ``track_ids [N]`` (unique within one tracker instance) and ``is_predicted [N]``
    (True when the box is the filter's prediction, not a matched detection)."""

    boxes_xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    track_ids: np.ndarray
    is_predicted: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        boxes = _as(self.boxes_xyxy, np.float32, (4,), "boxes_xyxy")
        n = len(boxes)
        scores = _as(self.scores, np.float32, (), "scores")
        class_ids = _as(self.class_ids, np.int64, (), "class_ids")
        track_ids = _as(self.track_ids, np.int64, (), "track_ids")
        pred = (np.zeros(n, bool) if self.is_predicted is None
                else _as(self.is_predicted, np.bool_, (), "is_predicted"))
        if not (n == len(scores) == len(class_ids) == len(track_ids) == len(pred)):
            raise ValueError("Tracks columns have different lengths")
        for name, value in (("boxes_xyxy", boxes), ("scores", scores), ("class_ids", class_ids),
                            ("track_ids", track_ids), ("is_predicted", pred)):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return len(self.track_ids)

    @classmethod
    def empty(cls) -> "Tracks":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                   np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))


@dataclass(frozen=True)
class ObjectTable:
    """Tracked objects of one frame with their 3-D position, as the node publishes them.

    ``tracks``: the 2-D tracks (boxes in RGB pixels, ids, classes, scores).
    ``xyz_m [N,3]``: box centroid in the camera optical frame (x right, y down,
    z forward), metres, NaN where depth is unknown. ``extent_m [N,3]``: width,
    height and depth extent of the object in metres (NaN when unknown).
    ``class_names``: names indexed by ``tracks.class_ids``.
    """

    tracks: Tracks
    xyz_m: np.ndarray
    extent_m: np.ndarray
    class_names: tuple = ()

    def __post_init__(self) -> None:
        n = len(self.tracks)
        xyz = np.ascontiguousarray(self.xyz_m, dtype=np.float32).reshape(-1, 3) if n else \
            np.zeros((0, 3), np.float32)
        extent = np.ascontiguousarray(self.extent_m, dtype=np.float32).reshape(-1, 3) if n \
            else np.zeros((0, 3), np.float32)
        if xyz.shape != (n, 3) or extent.shape != (n, 3):
            raise ValueError(f"xyz_m and extent_m must be [{n}, 3], got {xyz.shape}, "
                             f"{extent.shape}")
        object.__setattr__(self, "xyz_m", xyz)
        object.__setattr__(self, "extent_m", extent)
        object.__setattr__(self, "class_names", tuple(self.class_names))

    def __len__(self) -> int:
        return len(self.tracks)

    def class_name(self, i: int) -> str:
        """Name of object ``i``'s class (``class_<id>`` when unnamed)."""
        cid = int(self.tracks.class_ids[i])
        return self.class_names[cid] if 0 <= cid < len(self.class_names) else f"class_{cid}"
