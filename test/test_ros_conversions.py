"""ROS message conversions with the real message classes."""
from __future__ import annotations

import array

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Float32MultiArray, Header

from robot_vision_ros.core.errors import InputError
from robot_vision_ros.ros.conversions import (
    depth_m_to_image_msg, feature_table_to_pointcloud2, features_to_multiarray,
    image_msg_to_depth_m, image_msg_to_rgb, ns_to_stamp, pack_pointcloud2,
    pointcloud2_to_feature_table, rgb_to_image_msg, stamp_to_ns, unpack_pointcloud2)

RNG = np.random.default_rng(2)


def _header(frame_id: str = "camera_color_optical_frame") -> Header:
    return Header(stamp=Time(sec=1_700_000_000, nanosec=123_456_789), frame_id=frame_id)


def _rgb(h: int = 17, w: int = 33) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _image(encoding: str, pixels: np.ndarray, pad: int = 0, bigendian: int = 0) -> Image:
    """An Image message built by hand, as a camera driver would."""
    h, w = pixels.shape[:2]
    row_bytes = pixels[0].nbytes
    rows = pixels.reshape(h, row_bytes // pixels.itemsize)
    data = b"".join(row.tobytes() + b"\x00" * pad for row in rows)
    msg = Image(header=_header(), height=h, width=w, encoding=encoding,
                is_bigendian=bigendian, step=row_bytes + pad)
    msg.data = array.array("B", data)
    return msg


@pytest.mark.parametrize("encoding,to_wire", [
    ("rgb8", lambda rgb: rgb),
    ("bgr8", lambda rgb: rgb[:, :, ::-1]),
    ("rgba8", lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])),
    ("bgra8", lambda rgb: np.dstack([rgb[:, :, ::-1], np.zeros(rgb.shape[:2], np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 5])
def test_hand_built_color_messages_decode(encoding, to_wire, pad):
    rgb = _rgb()
    out = image_msg_to_rgb(_image(encoding, np.ascontiguousarray(to_wire(rgb)), pad=pad))
    np.testing.assert_array_equal(out, rgb)


def test_mono8_message_decodes_to_gray_rgb():
    gray = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
    out = image_msg_to_rgb(_image("mono8", gray, pad=3))
    assert out.shape == (9, 11, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_depth_messages_decode():
    mm = RNG.integers(200, 9000, (12, 21)).astype(np.uint16)
    mm[0, 0] = 0
    for bigendian, dtype in ((0, "<u2"), (1, ">u2")):
        msg = _image("16UC1", mm.astype(dtype), pad=2, bigendian=bigendian)
        depth_m = image_msg_to_depth_m(msg, 0.0, 8.0)
        expected = mm.astype(np.float32) / 1000
        expected[(mm == 0) | (expected > 8.0)] = np.nan
        np.testing.assert_allclose(depth_m, expected, rtol=1e-6)
    metres = RNG.uniform(0.5, 4, (12, 21)).astype(np.float32)
    metres[3, 4] = np.inf
    out = image_msg_to_depth_m(_image("32FC1", metres.astype(">f4"), bigendian=1))
    assert np.isnan(out[3, 4]) and np.isnan(out).sum() == 1
    np.testing.assert_array_equal(out[~np.isnan(out)], metres[np.isfinite(metres)])


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_rgb_to_image_msg_round_trip(encoding):
    rgb = _rgb()
    header = _header()
    msg = rgb_to_image_msg(rgb, header, encoding)
    assert isinstance(msg, Image) and isinstance(msg.data, array.array)
    assert (msg.encoding, msg.height, msg.width, msg.is_bigendian) == (encoding, 17, 33, 0)
    assert msg.step * msg.height == len(msg.data)
    assert msg.header.frame_id == header.frame_id and msg.header.stamp == header.stamp
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
def test_depth_to_image_msg_round_trip(encoding):
    depth_m = np.round(RNG.uniform(0.3, 6, (10, 15)), 3).astype(np.float32)
    depth_m[2, 2] = np.nan
    msg = depth_m_to_image_msg(depth_m, _header(), encoding)
    assert msg.encoding == encoding and msg.step == 15 * (4 if encoding == "32FC1" else 2)
    out = image_msg_to_depth_m(msg)
    assert np.isnan(out[2, 2])
    np.testing.assert_allclose(out, depth_m, atol=1e-6)


def test_bad_image_messages():
    msg = rgb_to_image_msg(_rgb(), _header())
    msg.data = msg.data[:-10]
    with pytest.raises(InputError) as err:
        image_msg_to_rgb(msg)
    assert err.value.reason == "truncated"
    msg = rgb_to_image_msg(_rgb(), _header())
    msg.encoding = "bayer_rggb8"
    with pytest.raises(InputError, match="bayer_rggb8") as err:
        image_msg_to_rgb(msg)
    assert err.value.reason == "unknown_encoding"
    with pytest.raises(InputError) as err:
        rgb_to_image_msg(np.zeros((4, 4), np.float32), _header())
    assert err.value.reason == "bad_size"


def test_stamp_conversions():
    stamp = Time(sec=1_700_000_000, nanosec=999_999_999)
    ns = stamp_to_ns(stamp)
    assert ns == 1_700_000_000_999_999_999
    assert ns_to_stamp(ns) == stamp
    assert ns_to_stamp(0) == Time()
    negative = ns_to_stamp(-1)
    assert (negative.sec, negative.nanosec) == (-1, 999_999_999)
    assert stamp_to_ns(negative) == -1
    with pytest.raises(InputError, match="int32") as err:
        ns_to_stamp(2 ** 31 * 1_000_000_000)
    assert err.value.reason == "bad_stamp"


def test_features_to_multiarray():
    vector = RNG.normal(size=768).astype(np.float32)
    msg = features_to_multiarray(vector, "resnet18")
    assert isinstance(msg, Float32MultiArray)
    assert len(msg.layout.dim) == 1 and msg.layout.data_offset == 0
    dim = msg.layout.dim[0]
    assert (dim.label, dim.size, dim.stride) == ("resnet18", 768, 768)
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.float32), vector)
    as_float64 = features_to_multiarray(vector.astype(np.float64), "vit_b_16")
    np.testing.assert_array_equal(np.frombuffer(as_float64.data, np.float32), vector)
    with pytest.raises(InputError, match=r"\[D\]") as err:
        features_to_multiarray(np.zeros((2, 3), np.float32), "x")
    assert err.value.reason == "bad_size"


def test_pack_unpack_every_datatype():
    dtype = np.dtype([("x", "<f4"), ("id", "<u4"), ("delta", "<i4"), ("t", "<f8"),
                      ("flag", "u1"), ("small", "i1"), ("h", "<u2"), ("s", "<i2"),
                      ("rgb", "u1", (3,))])
    table = np.zeros(5, dtype)
    for name in dtype.names:
        table[name] = RNG.integers(0, 100, table[name].shape)
    msg = pack_pointcloud2(table, _header())
    assert isinstance(msg, PointCloud2)
    assert (msg.height, msg.width, msg.is_bigendian) == (1, 5, False)
    assert msg.point_step == dtype.itemsize and msg.row_step == 5 * dtype.itemsize
    assert msg.is_dense
    by_name = {f.name: f for f in msg.fields}
    assert [by_name[n].datatype for n in ("x", "id", "delta", "t", "flag", "small", "h", "s")] \
        == [PointField.FLOAT32, PointField.UINT32, PointField.INT32, PointField.FLOAT64,
            PointField.UINT8, PointField.INT8, PointField.UINT16, PointField.INT16]
    assert by_name["rgb"].count == 3 and by_name["t"].offset == dtype.fields["t"][1]
    out = unpack_pointcloud2(msg)
    assert out.dtype.names == dtype.names
    for name in dtype.names:
        np.testing.assert_array_equal(out[name], table[name])


def test_pack_big_endian_table_is_sent_little_endian_and_nan_is_not_dense():
    table = np.array([(1.5, 7), (np.nan, 8)], dtype=[("x", ">f4"), ("id", ">u4")])
    msg = pack_pointcloud2(table, _header())
    assert not msg.is_bigendian and not msg.is_dense
    assert bytes(msg.data[:4]) == np.float32(1.5).astype("<f4").tobytes()
    np.testing.assert_array_equal(unpack_pointcloud2(msg)["id"], [7, 8])


def test_unpack_handles_big_endian_and_row_padding():
    inner = np.array([(1.0, 2), (3.0, 4), (5.0, 6), (7.0, 8)], dtype=[("x", ">f4"), ("k", ">u4")])
    rows = inner.reshape(2, 2)
    data = b"".join(row.tobytes() + b"\xee" * 4 for row in rows)
    msg = PointCloud2(header=_header(), height=2, width=2, is_bigendian=True, point_step=8,
                      row_step=20, is_dense=True,
                      fields=[PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
                              PointField(name="k", offset=4, datatype=PointField.UINT32, count=1)])
    msg.data = array.array("B", data)
    out = unpack_pointcloud2(msg)
    np.testing.assert_array_equal(out["x"], [1, 3, 5, 7])
    np.testing.assert_array_equal(out["k"], [2, 4, 6, 8])


def test_bad_pointclouds():
    with pytest.raises(InputError, match="structured") as err:
        pack_pointcloud2(np.zeros(3, np.float32), _header())
    assert err.value.reason == "bad_size"
    with pytest.raises(InputError, match="complex64"):
        pack_pointcloud2(np.zeros(3, [("z", "<c8")]), _header())
    msg = pack_pointcloud2(np.zeros(3, [("x", "<f4")]), _header())
    msg.data = msg.data[:-1]
    with pytest.raises(InputError) as err:
        unpack_pointcloud2(msg)
    assert err.value.reason == "truncated"
    msg = pack_pointcloud2(np.zeros(3, [("x", "<f4")]), _header())
    msg.fields[0].datatype = 42
    with pytest.raises(InputError, match="42") as err:
        unpack_pointcloud2(msg)
    assert err.value.reason == "unknown_datatype"
    msg = pack_pointcloud2(np.zeros(3, [("x", "<f4")]), _header())
    with pytest.raises(InputError, match="missing field") as err:
        pointcloud2_to_feature_table(msg)
    assert err.value.reason == "missing_field"


@pytest.mark.parametrize("dim,count", [(768, 196), (1, 3), (16, 0)])
def test_feature_table_round_trip(dim, count):
    pooled = RNG.normal(size=dim).astype(np.float32)
    tokens = RNG.normal(size=(count, dim)).astype(np.float32)
    uv_px = RNG.uniform(0, 640, (count, 2)).astype(np.float32)
    level = RNG.integers(1, 4, count)
    if count:
        uv_px[-1] = np.nan  # an object slot has no image position
        level[-1] = 255
    header = _header()
    msg = feature_table_to_pointcloud2(pooled, tokens, uv_px, level, header)
    assert (msg.height, msg.width) == (1, count + 1)
    assert msg.header.stamp == header.stamp and msg.header.frame_id == header.frame_id
    assert not msg.is_dense and not msg.is_bigendian
    fields = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    assert fields == [("feature", 0, PointField.FLOAT32, dim),
                      ("u", 4 * dim, PointField.FLOAT32, 1),
                      ("v", 4 * dim + 4, PointField.FLOAT32, 1),
                      ("level", 4 * dim + 8, PointField.UINT32, 1)]
    assert msg.point_step == 4 * dim + 12 and len(msg.data) == msg.point_step * (count + 1)
    features, uv, levels = pointcloud2_to_feature_table(msg)
    assert features.shape == (count + 1, dim) and uv.shape == (count + 1, 2)
    np.testing.assert_array_equal(features[0], pooled)
    np.testing.assert_array_equal(features[1:], tokens)
    assert np.isnan(uv[0]).all() and levels[0] == 0
    np.testing.assert_array_equal(uv[1:], uv_px)
    np.testing.assert_array_equal(levels[1:], level)
    assert levels.dtype == np.uint32


def test_feature_table_bad_shapes():
    pooled = np.zeros(8, np.float32)
    with pytest.raises(InputError, match=r"tokens must be \[N, D=8\]") as err:
        feature_table_to_pointcloud2(pooled, np.zeros((4, 7)), np.zeros((4, 2)), np.ones(4),
                                     _header())
    assert err.value.reason == "bad_size"
    with pytest.raises(InputError, match="token_uv_px"):
        feature_table_to_pointcloud2(pooled, np.zeros((4, 8)), np.zeros((3, 2)), np.ones(4),
                                     _header())
    with pytest.raises(InputError, match="UINT32"):
        feature_table_to_pointcloud2(pooled, np.zeros((1, 8)), np.zeros((1, 2)), -np.ones(1),
                                     _header())
