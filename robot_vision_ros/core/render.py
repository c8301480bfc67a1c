"""Pictures for people: colour-mapped depth, drawn detections, attention overlays.

Every function returns a new ``[H, W, 3]`` uint8 RGB image (the rqt topics
are rgb8); inputs are never modified.
"""
from __future__ import annotations

import colorsys
import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from .detections import ObjectTable
from .errors import ConfigError, InputError

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_DASH_PX = 8  # dash and gap length of predicted boxes
_GOLDEN_RATIO = 0.618033988749895


def _check_rgb(rgb: object, name: str = "rgb") -> np.ndarray:
    if (not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3
            or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0):
        raise InputError(f"{name} must be a non-empty [H, W, 3] uint8 RGB image, got "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)} "
                         f"{getattr(rgb, 'shape', '')}", reason="bad_size")
    return rgb


def _check_map(array: object, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.size == 0:
        raise InputError(f"{name} must be a non-empty [H, W] array, got "
                         f"{getattr(array, 'shape', type(array).__name__)}", reason="bad_size")
    return array


def _apply_colormap(unit: np.ndarray, colormap: int) -> np.ndarray:
    """``[H, W]`` values in [0, 1] -> RGB uint8 through an OpenCV colormap."""
    index = np.clip(np.nan_to_num(unit, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(index, colormap), cv2.COLOR_BGR2RGB)


def colorize_depth(depth_m: np.ndarray, min_m: Optional[float] = None,
                   max_m: Optional[float] = None,
                   colormap: int = cv2.COLORMAP_TURBO) -> np.ndarray:
    """Depth in metres -> colour image (near = start of ``colormap``, far = end).

    Unknown pixels (NaN, inf, <= 0) are black. A bound left as None comes from
    the valid pixels' 2nd / 98th percentile, so a few outliers do not wash
    out the picture; values beyond the range saturate.
    """
    depth = _check_map(depth_m, "depth_m").astype(np.float32, copy=False)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    out = np.zeros(depth.shape + (3,), np.uint8)
    if not valid.any():
        return out
    if min_m is None or max_m is None:
        lo, hi = np.percentile(depth[valid], (2.0, 98.0))
        min_m = float(lo) if min_m is None else min_m
        max_m = float(hi) if max_m is None else max_m
    span = max(float(max_m) - float(min_m), 1e-6)
    colored = _apply_colormap((depth - float(min_m)) / span, colormap)
    out[valid] = colored[valid]
    return out


def track_color(track_id: int) -> Tuple[int, int, int]:
    """A bright RGB colour per track id, the same on every frame and every run.

    Hues step by the golden ratio, so consecutive ids get far-apart colours.
    """
    hue = (int(track_id) * _GOLDEN_RATIO) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _dashed_rectangle(image: np.ndarray, p1: Tuple[int, int], p2: Tuple[int, int],
                      color: Tuple[int, int, int], thickness: int) -> None:
    # OpenCV has no dashed line style: draw the dashes as short segments.
    (x1, y1), (x2, y2) = p1, p2
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)),
                               ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, length + 1, 2 * _DASH_PX):
            end = min(start + _DASH_PX, length)
            t0, t1 = start / max(length, 1), end / max(length, 1)
            cv2.line(image, (round(ax + (bx - ax) * t0), round(ay + (by - ay) * t0)),
                     (round(ax + (bx - ax) * t1), round(ay + (by - ay) * t1)),
                     color, thickness, cv2.LINE_AA)


def _label(table: ObjectTable, i: int) -> str:
    tracks = table.tracks
    text = f"{table.class_name(i)} {float(tracks.scores[i]):.2f} #{int(tracks.track_ids[i])}"
    z = float(table.xyz_m[i, 2])
    return f"{text} {z:.2f}m" if math.isfinite(z) else text


def draw_objects(rgb: np.ndarray, table: ObjectTable) -> np.ndarray:
    """``rgb`` with each tracked object's box and a ``class score #id [z m]`` label.

    Colour per track id (:func:`track_color`); boxes of predicted tracks (the
    detector skipped the frame) are dashed and thinner.
    """
    image = _check_rgb(rgb).copy()
    if not isinstance(table, ObjectTable):
        raise InputError(f"table must be an ObjectTable, got {type(table).__name__}",
                         reason="bad_type")
    h, w = image.shape[:2]
    thickness = max(2, round(min(h, w) / 240))
    tracks = table.tracks
    for i in range(len(table)):
        box = tracks.boxes_xyxy[i]
        if not np.isfinite(box).all():
            continue
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        x1, x2 = sorted((min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)))
        y1, y2 = sorted((min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)))
        color = track_color(int(tracks.track_ids[i]))
        if bool(tracks.is_predicted[i]):
            _dashed_rectangle(image, (x1, y1), (x2, y2), color, max(1, thickness - 1))
        else:
            cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        text = _label(table, i)
        (tw, th), baseline = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
        # Label above the box, or inside it when the box touches the top edge.
        top = y1 - th - baseline - 2 if y1 - th - baseline - 2 >= 0 else y1
        cv2.rectangle(image, (x1, top), (x1 + tw + 2, top + th + baseline + 2), color, -1)
        cv2.putText(image, text, (x1 + 1, top + th + 1), _FONT, _FONT_SCALE, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return image


def overlay_attention(rgb: np.ndarray, attention: np.ndarray, alpha: float = 0.5,
                      colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a heat map of ``attention`` (``[h, w]``, any scale) over ``rgb``.

    The map is min-max normalised (NaN as the minimum), resized bilinearly to
    the image and blended as ``(1 - alpha) * rgb + alpha * heat``.
    """
    image = _check_rgb(rgb)
    att = _check_map(attention, "attention").astype(np.float32)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    finite = np.isfinite(att)
    if finite.any():
        lo, hi = float(att[finite].min()), float(att[finite].max())
        att = np.where(finite, (att - lo) / max(hi - lo, 1e-12), 0.0).astype(np.float32)
    else:
        att = np.zeros_like(att)
    att = cv2.resize(att, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = _apply_colormap(att, colormap)
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)


def side_by_side(images: Sequence[np.ndarray], height: int) -> np.ndarray:
    """The images scaled to ``height`` (aspect kept) and placed left to right."""
    if isinstance(height, bool) or not isinstance(height, int) or height < 1:
        raise ConfigError(f"height must be an integer >= 1, got {height!r}")
    if len(images) == 0:
        raise InputError("side_by_side needs at least one image", reason="bad_size")
    scaled = []
    for k, image in enumerate(images):
        image = _check_rgb(image, f"images[{k}]")
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        scaled.append(image if image.shape[:2] == (height, width) else
                      cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))
    return np.ascontiguousarray(np.hstack(scaled))
