"""image_transport compressed colour and compressedDepth decoding (OpenCV, no ROS)."""
import cv2
import numpy as np
import pytest

from robot_vision_ros.core.compressed_codec import (decode_compressed_color,
                                                    decode_compressed_depth,
                                                    encode_compressed_depth)
from robot_vision_ros.core.errors import InputError


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :32] = (200, 30, 10)  # a red half: channel order must survive
    image[:, 32:] = rng.integers(0, 255, (48, 32, 3), dtype=np.uint8)
    return image


def test_png_and_jpeg_round_trip_in_rgb_order(rgb):
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert np.array_equal(decode_compressed_color("rgb8; png compressed bgr8", png), rgb)
    jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY,
                                                                       95])[1].tobytes()
    decoded = decode_compressed_color("jpeg", jpg)
    assert decoded.shape == rgb.shape
    assert np.abs(decoded[:, :28].astype(int) - (200, 30, 10)).max() < 12  # red stays red


def test_rgb_stored_payload_and_grey(rgb):
    png_rgb = cv2.imencode(".png", rgb)[1].tobytes()  # channels stored as rgb8
    assert np.array_equal(decode_compressed_color("rgb8; png compressed rgb8", png_rgb), rgb)
    grey = cv2.imencode(".png", rgb[..., 0])[1].tobytes()
    assert decode_compressed_color("mono8; png compressed mono8", grey).shape == (48, 64, 3)


def test_compressed_depth_16uc1_round_trip_with_unknowns():
    depth = np.full((30, 40), 1.234, np.float32)
    depth[0, 0] = np.nan
    fmt, data = encode_compressed_depth(depth)
    out = decode_compressed_depth(fmt, data, min_m=0.1, max_m=10.0)
    assert np.isnan(out[0, 0]) and np.allclose(out[1:, 1:], 1.234, atol=1e-3)


def test_compressed_depth_32fc1_inverse_quantisation():
    # The plugin stores value = A / depth + B; 0 means unknown.
    quant_a, quant_b = 100.0, 0.5
    depth = np.array([[0.5, 1.0], [2.0, 0.0]], np.float32)
    values = np.where(depth > 0, quant_a / np.maximum(depth, 1e-6) + quant_b, 0).astype(np.uint16)
    import struct
    data = struct.pack("<iff", 0, quant_a, quant_b) + cv2.imencode(".png", values)[1].tobytes()
    out = decode_compressed_depth("32FC1; compressedDepth png", data)
    assert np.allclose(out[:1], [[0.5, 1.0]], rtol=0.02) and np.isnan(out[1, 1])


@pytest.mark.parametrize("call,reason", [
    (lambda: decode_compressed_color("jpeg", b""), "truncated"),
    (lambda: decode_compressed_color("jpeg", b"not an image"), "bad_data"),
    (lambda: decode_compressed_depth("16UC1; compressedDepth png", b"\x00" * 8), "truncated"),
    (lambda: decode_compressed_depth("bgr8; compressedDepth png", b"\x00" * 40),
     "unknown_encoding"),
    (lambda: decode_compressed_depth("16UC1; compressedDepth png", b"\x00" * 12 + b"junk"),
     "bad_data"),
])
def test_bad_compressed_input_is_a_counted_input_error(call, reason):
    with pytest.raises(InputError) as err:
        call()
    assert err.value.reason == reason
