"""numpy <-> ROS message conversions: images, stamps, feature vectors, PointCloud2.

cv_bridge and sensor_msgs_py are not installable here, so images go through
:mod:`robot_vision_ros.core.image_codec` and PointCloud2 is packed from numpy
structured arrays the way sensor_msgs_py does it.

Speed: message ``data`` is always filled from one contiguous buffer into an
``array.array`` (the type the generated setter stores). Lists and memoryviews
cost 18-40 ms a VGA frame; ``bytes`` are fast on Kilted but on Humble the
setter's debug assertion walks every byte, while ``array.array`` is accepted
as it is on every distribution.
"""
from __future__ import annotations

import array
from typing import Dict, Optional, Tuple

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Float32MultiArray, Header, MultiArrayDimension

from ..core.errors import InputError
from ..core.image_codec import decode_color, decode_depth, encode_image

_NS_PER_S = 1_000_000_000
_INT32_MAX = 2 ** 31 - 1

#: PointField datatype -> numpy scalar kind (byte order added at use).
_FIELD_KIND: Dict[int, str] = {
    PointField.INT8: "i1", PointField.UINT8: "u1",
    PointField.INT16: "i2", PointField.UINT16: "u2",
    PointField.INT32: "i4", PointField.UINT32: "u4",
    PointField.FLOAT32: "f4", PointField.FLOAT64: "f8",
}
_KIND_FIELD: Dict[str, int] = {kind: datatype for datatype, kind in _FIELD_KIND.items()}


def _uint8_array(buffer: np.ndarray) -> array.array:
    """Bytes of a numpy array as ``array('B')``: one copy, fast setter path."""
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(buffer).reshape(-1).view(np.uint8))
    return out


# ---------------------------------------------------------------- images

def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> ``[H, W, 3]`` uint8 RGB.

    For unpadded rgb8 the result is a view of ``msg.data`` (no copy).
    """
    return decode_color(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                        msg.data)


def image_msg_to_depth_m(msg: Image, min_m: float = 0.0,
                         max_m: float = float("inf")) -> np.ndarray:
    """sensor_msgs/Image (16UC1 mm, 32FC1 m) -> ``[H, W]`` float32 metres, NaN unknown."""
    return decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                        msg.data, min_m=min_m, max_m=max_m)


def _image_msg(array_: np.ndarray, header: Header, encoding: str) -> Image:
    encoded = encode_image(array_, encoding)
    msg = Image(header=header, height=encoded.height, width=encoded.width,
                encoding=encoded.encoding, is_bigendian=encoded.is_bigendian,
                step=encoded.step)
    msg.data = array.array("B", encoded.data)
    return msg


def rgb_to_image_msg(rgb: np.ndarray, header: Header, encoding: str = "rgb8") -> Image:
    """``[H, W, 3]`` uint8 RGB -> sensor_msgs/Image in ``encoding``."""
    return _image_msg(rgb, header, encoding)


def depth_m_to_image_msg(depth_m: np.ndarray, header: Header,
                         encoding: str = "32FC1") -> Image:
    """``[H, W]`` float metres (NaN unknown) -> sensor_msgs/Image 32FC1 or 16UC1."""
    return _image_msg(depth_m, header, encoding)


# ---------------------------------------------------------------- stamps

def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * _NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    """Integer nanoseconds -> builtin_interfaces/Time (nanosec always in [0, 1e9))."""
    sec, nanosec = divmod(int(ns), _NS_PER_S)
    if not -_INT32_MAX - 1 <= sec <= _INT32_MAX:
        raise InputError(f"time {ns} ns does not fit builtin_interfaces/Time (int32 seconds)",
                         reason="bad_stamp")
    return Time(sec=sec, nanosec=nanosec)


# ---------------------------------------------------------------- features

def features_to_multiarray(vector: np.ndarray, label: str) -> Float32MultiArray:
    """``[D]`` vector -> Float32MultiArray; ``layout.dim[0]`` = (label, D, D)."""
    vector = np.asarray(vector)
    if vector.ndim != 1:
        raise InputError(f"feature vector must be [D], got shape {tuple(vector.shape)}",
                         reason="bad_size")
    size = int(vector.shape[0])
    msg = Float32MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=str(label), size=size, stride=size)]
    msg.layout.data_offset = 0
    data = array.array("f")
    data.frombytes(np.ascontiguousarray(vector, dtype=np.float32).view(np.uint8))
    msg.data = data
    return msg


# ---------------------------------------------------------------- PointCloud2

def pack_pointcloud2(table: np.ndarray, header: Header,
                     is_dense: Optional[bool] = None) -> PointCloud2:
    """1-D numpy structured array -> unorganised PointCloud2 (height 1, little-endian).

    Each named field becomes a PointField at its dtype offset; sub-array fields
    (``('feature', 'f4', (768,))``) get ``count`` = number of elements.
    ``is_dense`` defaults to "no NaN or inf in any float field".
    """
    if not isinstance(table, np.ndarray) or table.dtype.names is None or table.ndim != 1:
        got = (f"{table.dtype} {tuple(table.shape)}" if isinstance(table, np.ndarray)
               else type(table).__name__)
        raise InputError(f"point table must be a 1-D numpy structured array, got {got}",
                         reason="bad_size")
    table = table.astype(table.dtype.newbyteorder("<"), copy=False)
    fields = []
    finite = True
    for name in table.dtype.names:
        field_dtype, offset = table.dtype.fields[name][:2]
        base = field_dtype.base
        kind = f"{base.kind}{base.itemsize}"
        if kind not in _KIND_FIELD:
            raise InputError(f"field {name!r} has dtype {base}, which PointField cannot carry "
                             f"(supported: {', '.join(sorted(_KIND_FIELD))})",
                             reason="bad_size")
        count = int(np.prod(field_dtype.shape, dtype=np.int64)) if field_dtype.shape else 1
        fields.append(PointField(name=name, offset=int(offset), datatype=_KIND_FIELD[kind],
                                 count=count))
        if is_dense is None and base.kind == "f" and finite:
            finite = bool(np.isfinite(table[name]).all())
    msg = PointCloud2(header=header, height=1, width=int(table.shape[0]), fields=fields,
                      is_bigendian=False, point_step=int(table.dtype.itemsize),
                      row_step=int(table.dtype.itemsize) * int(table.shape[0]),
                      is_dense=finite if is_dense is None else bool(is_dense))
    msg.data = _uint8_array(table)
    return msg


def unpack_pointcloud2(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> 1-D structured array of ``height * width`` points.

    A zero-copy, read-only-by-convention view of ``msg.data`` unless rows are
    padded. Fields with ``count > 1`` become sub-array fields.
    """
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for field in msg.fields:
        kind = _FIELD_KIND.get(field.datatype)
        if kind is None:
            raise InputError(f"field {field.name!r} has unknown PointField datatype "
                             f"{field.datatype}", reason="unknown_datatype")
        names.append(field.name)
        formats.append((order + kind, (int(field.count),)) if field.count > 1 else order + kind)
        offsets.append(int(field.offset))
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    height, width = int(msg.height), int(msg.width)
    try:
        dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                          "itemsize": point_step})
    except ValueError as exc:
        raise InputError(f"PointCloud2 fields do not fit point_step {point_step}: {exc}",
                         reason="bad_size") from exc
    if row_step < width * point_step:
        raise InputError(f"row_step {row_step} < width {width} x point_step {point_step}",
                         reason="bad_size")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < row_step * height:
        raise InputError(f"PointCloud2 data has {data.size} bytes, row_step {row_step} x "
                         f"height {height} needs {row_step * height}", reason="truncated")
    if height * width == 0:
        return np.zeros(0, dtype=dtype)
    rows = data[:row_step * height].reshape(height, row_step)[:, :width * point_step]
    if row_step != width * point_step:
        rows = np.ascontiguousarray(rows)
    return rows.reshape(-1).view(dtype)


def feature_table_to_pointcloud2(pooled: np.ndarray, tokens: np.ndarray,
                                 token_uv_px: np.ndarray, token_level: np.ndarray,
                                 header: Header) -> PointCloud2:
    """Pooled vector and tokens -> the ``/vision/features/tokens`` PointCloud2.

    Row 0 is ``pooled`` with u = v = NaN and level 0, then one row per token:
    ``feature`` FLOAT32 x D at offset 0, FLOAT32 ``u``, ``v`` (RGB pixels, NaN
    for slots), UINT32 ``level``.
    """
    pooled = np.asarray(pooled)
    tokens = np.asarray(tokens)
    token_uv_px = np.asarray(token_uv_px)
    token_level = np.asarray(token_level)
    if pooled.ndim != 1 or pooled.shape[0] == 0:
        raise InputError(f"pooled must be [D] with D > 0, got shape {tuple(pooled.shape)}",
                         reason="bad_size")
    dim = int(pooled.shape[0])
    if tokens.ndim != 2 or tokens.shape[1] != dim:
        raise InputError(f"tokens must be [N, D={dim}], got shape {tuple(tokens.shape)}",
                         reason="bad_size")
    count = int(tokens.shape[0])
    if token_uv_px.shape != (count, 2) or token_level.shape != (count,):
        raise InputError(f"token_uv_px must be [N={count}, 2] and token_level [N={count}], "
                         f"got {tuple(token_uv_px.shape)} and {tuple(token_level.shape)}",
                         reason="bad_size")
    if count and (token_level.min() < 0 or token_level.max() > np.iinfo(np.uint32).max):
        raise InputError("token_level must fit UINT32", reason="bad_size")
    table = np.empty(count + 1, dtype=feature_table_dtype(dim))
    table["feature"][0] = pooled
    table["feature"][1:] = tokens
    table["u"][0] = table["v"][0] = np.nan
    table["u"][1:] = token_uv_px[:, 0]
    table["v"][1:] = token_uv_px[:, 1]
    table["level"][0] = 0
    table["level"][1:] = token_level
    return pack_pointcloud2(table, header, is_dense=False)


def feature_table_dtype(dim: int) -> np.dtype:
    """Structured dtype of one feature-table row for ``dim``-wide features."""
    return np.dtype([("feature", "<f4", (dim,)), ("u", "<f4"), ("v", "<f4"), ("level", "<u4")])


def pointcloud2_to_feature_table(msg: PointCloud2
                                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature-table PointCloud2 -> (features ``[M, D]`` float32, uv ``[M, 2]``
    float32 pixels, level ``[M]`` uint32); row 0 is the pooled vector."""
    table = unpack_pointcloud2(msg)
    names = table.dtype.names or ()
    missing = [name for name in ("feature", "u", "v", "level") if name not in names]
    if missing:
        raise InputError(f"PointCloud2 is not a feature table: missing field(s) "
                         f"{', '.join(missing)} (has {', '.join(names) or 'none'})",
                         reason="missing_field")
    features = table["feature"].astype(np.float32).reshape(table.shape[0], -1)
    uv = np.stack([table["u"], table["v"]], axis=1).astype(np.float32)
    level = table["level"].astype(np.uint32)
    return features, uv, level


def pointcloud2_to_rows(msg: PointCloud2, dtype: np.dtype, what: str) -> np.ndarray:
    """A PointCloud2 table -> 1-D array of ``dtype`` (a copy), fields taken by name.

    Extra fields or another order are accepted; a missing field raises
    InputError (``missing_field``) saying the message is not ``what``.
    """
    table = unpack_pointcloud2(msg)
    names = table.dtype.names or ()
    missing = [name for name in dtype.names if name not in names]
    if missing:
        raise InputError(f"PointCloud2 is not {what}: missing field(s) "
                         f"{', '.join(missing)} (has {', '.join(names) or 'none'})",
                         reason="missing_field")
    rows = np.empty(table.shape[0], dtype=dtype)
    for name in dtype.names:
        rows[name] = table[name]
    return rows
