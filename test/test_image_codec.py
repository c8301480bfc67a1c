"""Image codec: round trips, row padding, byte order, invalid depth, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from robot_vision_ros.core.errors import ConfigError, InputError
from robot_vision_ros.core.image_codec import (
    COLOR_ENCODINGS, EncodedImage, align_depth_to_rgb, decode_color, decode_depth,
    encode_image)

RNG = np.random.default_rng(0)
H, W = 17, 33  # odd sizes: rows are not a multiple of 4 or 8 bytes


def _rgb(h: int = H, w: int = W) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _depth_m(h: int = H, w: int = W) -> np.ndarray:
    return RNG.uniform(0.3, 8.0, (h, w)).astype(np.float32)


def _decode(enc: EncodedImage, **kwargs) -> np.ndarray:
    if enc.encoding in COLOR_ENCODINGS:
        return decode_color(enc.encoding, enc.height, enc.width, enc.step, enc.is_bigendian,
                            enc.data)
    return decode_depth(enc.encoding, enc.height, enc.width, enc.step, enc.is_bigendian,
                        enc.data, **kwargs)


def _pad_rows(enc: EncodedImage, pad: int, fill: int = 0xAB) -> tuple:
    """Rebuild ``enc.data`` with ``pad`` junk bytes after every row, by hand."""
    rows = [enc.data[r * enc.step:(r + 1) * enc.step] + bytes([fill]) * pad
            for r in range(enc.height)]
    return enc.step + pad, b"".join(rows)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_color_round_trip(encoding):
    rgb = _rgb()
    enc = encode_image(rgb, encoding)
    bpp = COLOR_ENCODINGS[encoding]
    assert (enc.height, enc.width, enc.step, enc.is_bigendian) == (H, W, W * bpp, 0)
    assert isinstance(enc.data, bytes) and len(enc.data) == H * W * bpp
    out = _decode(enc)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, rgb)


def test_bgr_bytes_are_swapped_and_rgba_alpha_is_opaque():
    rgb = _rgb()
    bgr = np.frombuffer(encode_image(rgb, "bgr8").data, np.uint8).reshape(H, W, 3)
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    rgba = np.frombuffer(encode_image(rgb, "rgba8").data, np.uint8).reshape(H, W, 4)
    np.testing.assert_array_equal(rgba[:, :, :3], rgb)
    assert (rgba[:, :, 3] == 255).all()


def test_mono8_round_trip_and_gray_from_rgb():
    gray = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    out = _decode(encode_image(gray, "mono8"))
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
    assert encode_image(np.repeat(gray[:, :, None], 3, axis=2), "mono8").data == gray.tobytes()


def test_rgb8_decode_is_zero_copy_view():
    data = bytearray(encode_image(_rgb(), "rgb8").data)
    out = decode_color("rgb8", H, W, W * 3, 0, data)
    assert np.shares_memory(out, np.frombuffer(data, np.uint8))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
@pytest.mark.parametrize("pad", [1, 3, 13])
def test_color_row_padding(encoding, pad):
    rgb = _rgb()
    if encoding == "mono8":
        rgb = np.repeat(rgb[:, :, :1], 3, axis=2)
    enc = encode_image(rgb, encoding)
    step, data = _pad_rows(enc, pad)
    out = decode_color(encoding, H, W, step, 0, data)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_round_trip(encoding):
    depth_m = _depth_m()
    enc = encode_image(depth_m, encoding)
    out = _decode(enc)
    assert out.dtype == np.float32 and out.shape == (H, W)
    if encoding == "32FC1":
        np.testing.assert_array_equal(out, depth_m)
    else:
        np.testing.assert_allclose(out, np.round(depth_m * 1000) / 1000, atol=1e-6)


def test_16uc1_encoding_rounds_to_mm_and_clips():
    depth_m = np.array([[0.0014, 0.0016, np.nan, np.inf, -1.0, 70.0]], np.float32)
    enc = encode_image(depth_m, "16UC1")
    raw = np.frombuffer(enc.data, "<u2")
    np.testing.assert_array_equal(raw, [1, 2, 0, 0, 0, 65535])
    mm = np.array([[0, 1500, 65535]], np.uint16)  # uint16 input is millimetres as is
    assert encode_image(mm, "16UC1").data == mm.astype("<u2").tobytes()


def test_32fc1_keeps_nan_and_mono16_alias():
    depth_m = _depth_m()
    depth_m[2, 3] = np.nan
    out = _decode(encode_image(depth_m, "32FC1"))
    assert np.isnan(out[2, 3]) and np.isnan(out).sum() == 1
    enc = encode_image(depth_m, "16UC1")
    alias = decode_depth("mono16", H, W, enc.step, 0, enc.data)
    np.testing.assert_array_equal(alias, _decode(enc))


@pytest.mark.parametrize("encoding,dtype,scale", [("16UC1", ">u2", 1000.0),
                                                  ("32FC1", ">f4", 1.0)])
def test_big_endian_depth(encoding, dtype, scale):
    depth_m = (np.round(_depth_m() * 1000) / 1000).astype(np.float32)
    values = depth_m.astype(np.float64) * scale
    if dtype == ">u2":
        values = np.rint(values)
    data = values.astype(dtype).tobytes()
    itemsize = np.dtype(dtype).itemsize
    out = decode_depth(encoding, H, W, W * itemsize, 1, data)
    np.testing.assert_allclose(out, depth_m, rtol=1e-6)
    # the same bytes read as little-endian are garbage: byte order is honoured
    wrong = decode_depth(encoding, H, W, W * itemsize, 0, data)
    assert not np.allclose(np.nan_to_num(wrong), depth_m)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_row_padding(encoding):
    depth_m = _depth_m()
    enc = encode_image(depth_m, encoding)
    step, data = _pad_rows(enc, 5)  # odd padding: rows start unaligned
    np.testing.assert_array_equal(decode_depth(encoding, H, W, step, 0, data), _decode(enc))


def test_invalid_depth_becomes_nan():
    values = np.array([[0.0, np.nan, np.inf, -np.inf, -0.5, 0.1, 0.5, 3.0, 9.0]], np.float32)
    out = decode_depth("32FC1", 1, 9, 36, 0, values.tobytes(), min_m=0.2, max_m=5.0)
    expected = np.array([[np.nan] * 6 + [0.5, 3.0, np.nan]], np.float32)
    np.testing.assert_array_equal(out, expected)
    raw_mm = np.array([[0, 150, 400, 65535]], "<u2")
    out = decode_depth("16UC1", 1, 4, 8, 0, raw_mm.tobytes(), min_m=0.2, max_m=10.0)
    np.testing.assert_allclose(out, [[np.nan, np.nan, 0.4, np.nan]])
    default = decode_depth("16UC1", 1, 4, 8, 0, raw_mm.tobytes())
    np.testing.assert_allclose(default, [[np.nan, 0.15, 0.4, 65.535]], rtol=1e-6)


def test_decode_depth_does_not_touch_the_message_buffer():
    data = bytearray(np.array([[0.0, 2.0]], "<f4").tobytes())
    out = decode_depth("32FC1", 1, 2, 8, 0, data)
    out[0, 1] = 7.0
    assert bytes(data) == np.array([[0.0, 2.0]], "<f4").tobytes()


def test_truncated_data():
    enc = encode_image(_rgb(), "rgb8")
    with pytest.raises(InputError, match=r"needs 1683") as err:
        decode_color("rgb8", H, W, enc.step, 0, enc.data[:-1])
    assert err.value.reason == "truncated"
    with pytest.raises(InputError) as err:
        decode_depth("16UC1", H, W, W * 2, 0, b"\0" * (H * W * 2 - 2))
    assert err.value.reason == "truncated"


def test_unknown_encoding_lists_supported():
    with pytest.raises(InputError, match=r"'yuv422'.*rgb8, bgr8") as err:
        decode_color("yuv422", H, W, W * 2, 0, b"\0" * (H * W * 2))
    assert err.value.reason == "unknown_encoding"
    with pytest.raises(InputError, match=r"16UC1") as err:
        decode_depth("rgb8", H, W, W * 3, 0, b"\0" * (H * W * 3))
    assert err.value.reason == "unknown_encoding"
    with pytest.raises(InputError, match=r"32FC1") as err:
        encode_image(_rgb(), "8UC3")
    assert err.value.reason == "unknown_encoding"


@pytest.mark.parametrize("height,width,step,match", [
    (0, W, W * 3, "empty"), (H, 0, 0, "empty"), (H, W, W * 3 - 1, "smaller than width")])
def test_bad_sizes_in_decode(height, width, step, match):
    with pytest.raises(InputError, match=match) as err:
        decode_color("rgb8", height, width, step, 0, b"\0" * 4096)
    assert err.value.reason == "bad_size"


@pytest.mark.parametrize("array,encoding", [
    (np.zeros((4, 4), np.uint8), "rgb8"),
    (np.zeros((4, 4, 3), np.float32), "rgb8"),
    (np.zeros((4, 4, 4), np.uint8), "bgr8"),
    (np.zeros((4, 4, 3), np.float32), "32FC1"),
    (np.zeros((4, 4), np.int32), "16UC1"),
    (np.zeros((0, 4, 3), np.uint8), "rgb8"),
    ([[1, 2]], "mono8"),
])
def test_bad_arrays_in_encode(array, encoding):
    with pytest.raises(InputError) as err:
        encode_image(array, encoding)
    assert err.value.reason == "bad_size"


def test_bad_depth_range():
    with pytest.raises(ConfigError, match="depth range"):
        decode_depth("32FC1", 1, 1, 4, 0, b"\0" * 4, min_m=5.0, max_m=1.0)


def test_align_depth_same_aspect_nearest():
    depth_m = np.arange(12, dtype=np.float32).reshape(3, 4)
    depth_m[1, 1] = np.nan
    up = align_depth_to_rgb(depth_m, (6, 8))
    assert up.shape == (6, 8) and up.dtype == np.float32
    np.testing.assert_array_equal(up, np.repeat(np.repeat(depth_m, 2, axis=0), 2, axis=1))
    # non-integer scale: every output value exists in the input (nothing invented)
    big = _depth_m(48, 64)
    odd = align_depth_to_rgb(big, (30, 40))
    assert odd.shape == (30, 40) and np.isin(odd, big).all()
    down = align_depth_to_rgb(big, (24, 32))
    np.testing.assert_array_equal(down, big[1::2, 1::2])
    assert align_depth_to_rgb(big, (48, 64)) is big


def test_align_depth_rejects_other_aspect():
    with pytest.raises(InputError, match=r"64x48.*RGB 64x64") as err:
        align_depth_to_rgb(_depth_m(48, 64), (64, 64))
    assert err.value.reason == "depth_size_mismatch"
    with pytest.raises(InputError) as err:
        align_depth_to_rgb(np.zeros((4, 4, 1), np.float32), (4, 4))
    assert err.value.reason == "bad_size"
