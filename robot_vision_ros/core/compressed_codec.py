"""Decode image_transport's compressed images without ROS (OpenCV + numpy).

``sensor_msgs/CompressedImage`` as the ``compressed`` plugin writes it (format
like ``"rgb8; jpeg compressed bgr8"`` or just ``"jpeg"``/``"png"``), and the
``compressedDepth`` plugin's depth images (format ``"16UC1; compressedDepth
png"`` or ``"32FC1; compressedDepth png"``: a 12-byte header, then a PNG).
"""
from __future__ import annotations

import struct
from typing import Tuple

import cv2
import numpy as np

from .image_codec import decode_depth
from .errors import InputError

#: compressed_depth_image_transport's ConfigHeader: int32 format, float32 depthParam[2].
_DEPTH_HEADER = struct.Struct("<iff")


def _buffer(data) -> np.ndarray:
    array = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if array.size == 0:
        raise InputError("compressed image has no data", reason="truncated")
    return array


def decode_compressed_color(fmt: str, data) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from a ``compressed`` (jpeg/png) image."""
    image = cv2.imdecode(_buffer(data), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"cannot decode compressed image (format {fmt!r})", reason="bad_data")
    if image.dtype != np.uint8:
        raise InputError(f"compressed colour image is {image.dtype}, expected 8-bit",
                         reason="unknown_encoding")
    # The codec stored channels as the format says ("... compressed bgr8"/"rgb8");
    # OpenCV decodes to BGR(A) order for the bgr case, the plain jpeg/png default.
    stored_rgb = "compressed rgb" in fmt
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        code = cv2.COLOR_RGBA2RGB if stored_rgb else cv2.COLOR_BGRA2RGB
        return cv2.cvtColor(image, code)
    return np.ascontiguousarray(image) if stored_rgb else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _depth_encoding(fmt: str) -> str:
    encoding = fmt.split(";")[0].strip()
    if encoding not in ("16UC1", "32FC1", "mono16"):
        raise InputError(f"compressedDepth format {fmt!r}: unsupported depth encoding "
                         f"{encoding!r} (16UC1 or 32FC1)", reason="unknown_encoding")
    return encoding


def decode_compressed_depth(fmt: str, data, min_m: float = 0.0,
                            max_m: float = float("inf")) -> np.ndarray:
    """``[H, W]`` float32 metres (NaN unknown) from a ``compressedDepth`` image."""
    encoding = _depth_encoding(fmt)
    raw = _buffer(data)
    if raw.size <= _DEPTH_HEADER.size:
        raise InputError(f"compressedDepth image of {raw.size} bytes has no PNG after its "
                         f"{_DEPTH_HEADER.size}-byte header", reason="truncated")
    _, quant_a, quant_b = _DEPTH_HEADER.unpack(raw[:_DEPTH_HEADER.size].tobytes())
    png = cv2.imdecode(raw[_DEPTH_HEADER.size:], cv2.IMREAD_UNCHANGED)
    if png is None or png.dtype != np.uint16 or png.ndim != 2:
        raise InputError("compressedDepth payload is not a 16-bit single-channel PNG",
                         reason="bad_data")
    if encoding == "32FC1":
        # Inverse-depth quantisation of the plugin: depth = A / (value - B), 0 = unknown.
        value = png.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.where(png > 0, quant_a / (value - quant_b), np.nan).astype(np.float32)
        return _decode_metres(depth, min_m, max_m)
    h, w = png.shape
    return decode_depth("16UC1", h, w, w * 2, 0, png.tobytes(), min_m, max_m)


def _decode_metres(depth: np.ndarray, min_m: float, max_m: float) -> np.ndarray:
    h, w = depth.shape
    return decode_depth("32FC1", h, w, w * 4, 0, depth.tobytes(), min_m, max_m)


def encode_compressed_depth(depth_m: np.ndarray, encoding: str = "16UC1"
                            ) -> Tuple[str, bytes]:
    """``(format, data)`` of a compressedDepth image (16UC1 only; for tests and tools)."""
    if encoding != "16UC1":
        raise InputError("only 16UC1 compressedDepth encoding is written", reason="bad_size")
    millimetres = np.nan_to_num(np.round(depth_m * 1000.0), nan=0.0)
    png = cv2.imencode(".png", np.clip(millimetres, 0, 65535).astype(np.uint16))[1]
    return "16UC1; compressedDepth png", _DEPTH_HEADER.pack(0, 0.0, 0.0) + png.tobytes()
