"""Decode and encode raw image buffers (sensor_msgs/Image layout) with numpy.

ROS-free: the ROS edge passes the message fields in, so this module is usable
from a notebook or a bag reader. cv_bridge is not available here (and the ROS 1
wheel on PyPI corrupts 16UC1 depth), hence our own codec.

Conventions: colour comes out as ``[H, W, 3]`` uint8 RGB; depth comes out as
``[H, W]`` float32 metres with NaN where unknown (REP-118: 16UC1 millimetres,
32FC1 metres, 0 means no reading).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import cv2
import numpy as np

from .errors import ConfigError, InputError

#: Colour encodings and their bytes per pixel.
COLOR_ENCODINGS: Dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
#: Depth encodings: (bytes per pixel, numpy kind, metres per unit).
DEPTH_ENCODINGS: Dict[str, Tuple[int, str, float]] = {
    "16UC1": (2, "u2", 0.001),
    "mono16": (2, "u2", 0.001),
    "32FC1": (4, "f4", 1.0),
}
#: Every encoding :func:`encode_image` can write.
ENCODABLE: Tuple[str, ...] = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "16UC1", "32FC1")

# cv2.cvtColor is used instead of numpy channel shuffles: it reads padded rows
# directly and is ~40x faster than a fancy-indexed copy (23 us vs 1 ms for VGA).
_TO_RGB = {
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
}
_FROM_RGB = {
    "bgr8": cv2.COLOR_RGB2BGR,
    "rgba8": cv2.COLOR_RGB2RGBA,
    "bgra8": cv2.COLOR_RGB2BGRA,
    "mono8": cv2.COLOR_RGB2GRAY,
}
_ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class EncodedImage:
    """The fields of a sensor_msgs/Image, without the header."""

    encoding: str
    height: int
    width: int
    step: int
    is_bigendian: int = 0
    data: bytes = b""


def _unknown(encoding: str, supported) -> InputError:
    return InputError(
        f"unsupported image encoding {encoding!r}; supported: {', '.join(supported)}",
        reason="unknown_encoding")


def _rows(height: int, width: int, step: int, bpp: int, data) -> np.ndarray:
    """``[height, width * bpp]`` uint8 view of the pixel bytes, row padding skipped."""
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise InputError(f"image size {width}x{height} is empty", reason="bad_size")
    if step < width * bpp:
        raise InputError(
            f"step {step} is smaller than width {width} x {bpp} bytes per pixel",
            reason="bad_size")
    flat = np.frombuffer(data, dtype=np.uint8)
    need = step * height
    if flat.size < need:
        raise InputError(
            f"image data has {flat.size} bytes, step {step} x height {height} needs {need}",
            reason="truncated")
    return flat[:need].reshape(height, step)[:, :width * bpp]


def decode_color(encoding: str, height: int, width: int, step: int,
                 is_bigendian: int, data) -> np.ndarray:
    """Pixel buffer -> ``[H, W, 3]`` uint8 RGB.

    ``rgb8`` returns a view of ``data`` (no copy, read-only if ``data`` is
    ``bytes``); the other encodings return a new array. ``is_bigendian`` does not
    matter for 8-bit encodings and is accepted for a uniform signature.
    """
    bpp = COLOR_ENCODINGS.get(encoding)
    if bpp is None:
        raise _unknown(encoding, COLOR_ENCODINGS)
    rows = _rows(height, width, step, bpp, data)
    pixels = rows.reshape(int(height), int(width), bpp)  # splits the last axis: a view
    if encoding == "rgb8":
        return pixels
    if encoding == "mono8":
        pixels = pixels[:, :, 0]
    return cv2.cvtColor(pixels, _TO_RGB[encoding])


def decode_depth(encoding: str, height: int, width: int, step: int, is_bigendian: int,
                 data, min_m: float = 0.0, max_m: float = float("inf")) -> np.ndarray:
    """Pixel buffer -> ``[H, W]`` float32 metres, NaN where unknown.

    Zero, NaN, +-inf and readings outside ``[min_m, max_m]`` become NaN. Always
    returns a new array, so the caller may modify it.
    """
    spec = DEPTH_ENCODINGS.get(encoding)
    if spec is None:
        raise _unknown(encoding, DEPTH_ENCODINGS)
    if not 0.0 <= min_m < max_m:
        raise ConfigError(f"depth range [{min_m}, {max_m}] m is empty or negative")
    bpp, kind, metres_per_unit = spec
    rows = _rows(height, width, step, bpp, data)
    raw = rows.view(np.dtype((">" if is_bigendian else "<") + kind))
    depth_m = raw.astype(np.float32)
    if metres_per_unit != 1.0:
        depth_m *= np.float32(metres_per_unit)
    with np.errstate(invalid="ignore"):
        valid = depth_m >= min_m if min_m > 0.0 else depth_m > 0.0
        valid &= depth_m <= max_m if np.isfinite(max_m) else np.isfinite(depth_m)
    depth_m[~valid] = np.nan
    return depth_m


def _require(array: np.ndarray, dtypes, shapes: str, ok: bool, encoding: str) -> None:
    if not isinstance(array, np.ndarray) or array.dtype not in dtypes or not ok:
        got = (f"{array.dtype} {tuple(array.shape)}" if isinstance(array, np.ndarray)
               else type(array).__name__)
        raise InputError(f"{encoding} needs a {shapes} array, got {got}", reason="bad_size")


def _encode_color(array: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "mono8":
        ok = isinstance(array, np.ndarray) and (
            array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3)))
        _require(array, (np.uint8,), "[H, W] or [H, W, 3] RGB uint8", ok, encoding)
        if array.ndim == 3 and array.shape[2] == 3:
            return cv2.cvtColor(array, cv2.COLOR_RGB2GRAY)
        return array.reshape(array.shape[0], array.shape[1])
    ok = isinstance(array, np.ndarray) and array.ndim == 3 and array.shape[2] == 3
    _require(array, (np.uint8,), "[H, W, 3] RGB uint8", ok, encoding)
    if encoding == "rgb8":
        return array
    return cv2.cvtColor(array, _FROM_RGB[encoding])


def _encode_depth(array: np.ndarray, encoding: str) -> np.ndarray:
    ok = isinstance(array, np.ndarray) and array.ndim == 2
    if encoding == "32FC1":
        _require(array, (np.float32, np.float64), "[H, W] float metres", ok, encoding)
        return array.astype(np.float32, copy=False)
    _require(array, (np.float32, np.float64, np.uint16),
             "[H, W] float metres (or uint16 millimetres)", ok, encoding)
    if array.dtype == np.uint16:
        return array
    with np.errstate(invalid="ignore"):
        depth_mm = np.rint(array * 1000.0)
        depth_mm[~np.isfinite(depth_mm)] = 0.0  # unknown (NaN, inf) is 0 in REP-118
    return np.clip(depth_mm, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def encode_image(array: np.ndarray, encoding: str) -> EncodedImage:
    """Array -> packed, unpadded, little-endian pixel bytes.

    Colour encodings take ``[H, W, 3]`` uint8 RGB (``mono8`` also ``[H, W]``);
    ``16UC1`` takes float metres (rounded to mm, NaN/inf -> 0, clipped to
    uint16) or uint16 millimetres as they are; ``32FC1`` takes float metres,
    NaN kept.
    """
    if encoding in COLOR_ENCODINGS:
        pixels = _encode_color(array, encoding)
    elif encoding in ("16UC1", "32FC1"):
        pixels = _encode_depth(array, encoding)
    else:
        raise _unknown(encoding, ENCODABLE)
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if height == 0 or width == 0:
        raise InputError(f"image size {width}x{height} is empty", reason="bad_size")
    pixels = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)
    step = width * (pixels.size // (height * width)) * pixels.itemsize
    return EncodedImage(encoding=encoding, height=height, width=width, step=step,
                        is_bigendian=0, data=pixels.tobytes())


def align_depth_to_rgb(depth_m: np.ndarray, rgb_hw: Tuple[int, int]) -> np.ndarray:
    """Resize a registered depth image to the RGB size by nearest neighbour.

    Nearest neighbour never blends a foreground and a background reading into a
    depth that exists nowhere. Returns ``depth_m`` itself when sizes match.
    Raises ``InputError(reason='depth_size_mismatch')`` if the aspect ratios
    differ by more than 1 % (then the depth is not aligned to this camera).
    """
    if not isinstance(depth_m, np.ndarray) or depth_m.ndim != 2 or depth_m.size == 0:
        got = tuple(depth_m.shape) if isinstance(depth_m, np.ndarray) else type(depth_m)
        raise InputError(f"depth must be a non-empty [H, W] array, got {got}",
                         reason="bad_size")
    rgb_h, rgb_w = int(rgb_hw[0]), int(rgb_hw[1])
    if rgb_h <= 0 or rgb_w <= 0:
        raise InputError(f"RGB size {rgb_w}x{rgb_h} is empty", reason="bad_size")
    depth_h, depth_w = depth_m.shape
    if (depth_h, depth_w) == (rgb_h, rgb_w):
        return depth_m
    ratio = (depth_w / depth_h) / (rgb_w / rgb_h)
    if abs(ratio - 1.0) > _ASPECT_TOLERANCE:
        raise InputError(
            f"depth image {depth_w}x{depth_h} does not match RGB {rgb_w}x{rgb_h} "
            f"(aspect ratios differ by {abs(ratio - 1.0):.1%}); publish depth aligned "
            "to the colour camera", reason="depth_size_mismatch")
    # INTER_NEAREST_EXACT samples pixel centres (as torch 'nearest-exact' does);
    # plain INTER_NEAREST shifts non-integer scales by half a source pixel.
    return cv2.resize(depth_m, (rgb_w, rgb_h), interpolation=cv2.INTER_NEAREST_EXACT)
