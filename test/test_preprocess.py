"""Preprocessor against a plain float reference; options; bad input."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robot_vision_ros.core.errors import ConfigError, InputError
from robot_vision_ros.core.image_codec import decode_color, encode_image
from robot_vision_ros.core.preprocess import Preprocessor
from robot_vision_ros.models.encoders.base import IMAGENET_MEAN, IMAGENET_STD

CPU = torch.device("cpu")
# One uint8 level after normalisation, for the channel with the smallest std.
ONE_LEVEL = 1.0 / (255.0 * min(IMAGENET_STD))


def _photo(h: int, w: int) -> np.ndarray:
    """Smooth gradients plus noise and a hard edge: resampling has work to do."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) % 64 * 4], axis=2)
    base[h // 3:h // 2, w // 4:w // 2] = (250, 10, 120)
    noisy = base + rng.normal(0, 12, base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _reference(rgb: np.ndarray, hw) -> torch.Tensor:
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].double()
    x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x / 255.0 - mean) / std).float()


@pytest.mark.parametrize("src_hw,dst_hw", [((96, 128), (64, 64)), ((48, 40), (64, 80)),
                                           ((64, 64), (64, 64))])
def test_matches_float_reference(src_hw, dst_hw):
    rgb = _photo(*src_hw)
    out = Preprocessor(dst_hw, IMAGENET_MEAN, IMAGENET_STD, CPU)(rgb)
    ref = _reference(rgb, dst_hw)
    assert out.shape == (1, 3) + dst_hw and out.dtype == torch.float32
    assert out.device == CPU and out.is_contiguous()
    diff = (out - ref).abs()
    # the uint8 path rounds its result to whole levels: at most one level off
    assert diff.max().item() <= ONE_LEVEL * 1.01
    assert diff.mean().item() <= ONE_LEVEL * 0.5
    if src_hw == dst_hw:
        assert diff.max().item() < 1e-5


def test_padded_read_only_view_from_message_bytes():
    rgb = _photo(21, 33)
    enc = encode_image(rgb, "rgb8")
    step = enc.step + 3
    data = b"".join(enc.data[r * enc.step:(r + 1) * enc.step] + b"\xff" * 3
                    for r in range(enc.height))
    view = decode_color("rgb8", 21, 33, step, 0, data)
    assert not view.flags.writeable and not view.flags.c_contiguous
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not writable" warning leaks out
        out = Preprocessor((16, 16), IMAGENET_MEAN, IMAGENET_STD, CPU)(view)
    assert (out - _reference(rgb, (16, 16))).abs().max().item() <= ONE_LEVEL * 1.01


def test_flipped_view_is_accepted():
    rgb = _photo(32, 48)
    pre = Preprocessor((24, 24), IMAGENET_MEAN, IMAGENET_STD, CPU)
    flipped = rgb[:, ::-1]
    torch.testing.assert_close(pre(flipped), pre(np.ascontiguousarray(flipped)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtype_and_memory_format(dtype, channels_last):
    rgb = _photo(48, 64)
    out = Preprocessor((32, 32), IMAGENET_MEAN, IMAGENET_STD, CPU, dtype=dtype,
                       channels_last=channels_last)(rgb)
    assert out.dtype == dtype and out.shape == (1, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    tolerance = ONE_LEVEL * 1.01 + (0.02 if dtype == torch.bfloat16 else 0.003)
    assert (out.float() - _reference(rgb, (32, 32))).abs().max().item() <= tolerance


def test_channels_last_float32_values_equal_default():
    rgb = _photo(40, 40)
    a = Preprocessor((20, 30), IMAGENET_MEAN, IMAGENET_STD, CPU)(rgb)
    b = Preprocessor((20, 30), IMAGENET_MEAN, IMAGENET_STD, CPU, channels_last=True)(rgb)
    assert b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_constants_are_reused_and_input_not_modified():
    rgb = _photo(30, 30)
    before = rgb.copy()
    pre = Preprocessor((16, 16), IMAGENET_MEAN, IMAGENET_STD, CPU)
    scale = pre._scale
    first = pre(rgb)
    second = pre(rgb)
    assert pre._scale is scale
    assert first.data_ptr() != second.data_ptr()  # callers may keep earlier outputs
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    np.testing.assert_array_equal(rgb, before)


def test_depth_nearest_and_nan_to_zero():
    depth_m = np.arange(16, dtype=np.float32).reshape(4, 4) + 1.0
    depth_m[0, 0] = np.nan
    pre = Preprocessor((8, 8), IMAGENET_MEAN, IMAGENET_STD, CPU)
    out = pre.depth(depth_m)
    assert out.shape == (1, 1, 8, 8) and out.dtype == torch.float32
    expected = np.repeat(np.repeat(np.nan_to_num(depth_m, nan=0.0), 2, 0), 2, 1)
    np.testing.assert_array_equal(out[0, 0].numpy(), expected)
    assert np.isnan(depth_m[0, 0])  # the caller's array is untouched
    same = Preprocessor((4, 4), IMAGENET_MEAN, IMAGENET_STD, CPU, dtype=torch.float16)
    half = same.depth(depth_m)
    assert half.dtype == torch.float16 and half[0, 0, 0, 0].item() == 0.0


@pytest.mark.parametrize("bad", [
    np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32),
    np.zeros((0, 8, 3), np.uint8), "image"])
def test_bad_rgb_input(bad):
    pre = Preprocessor((8, 8), IMAGENET_MEAN, IMAGENET_STD, CPU)
    with pytest.raises(InputError, match="uint8 RGB") as err:
        pre(bad)
    assert err.value.reason == "bad_size"


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 1), np.float32), np.zeros((8, 8), np.uint16)])
def test_bad_depth_input(bad):
    pre = Preprocessor((8, 8), IMAGENET_MEAN, IMAGENET_STD, CPU)
    with pytest.raises(InputError, match="depth") as err:
        pre.depth(bad)
    assert err.value.reason == "bad_size"


@pytest.mark.parametrize("kwargs,match", [
    ({"input_hw": (0, 8)}, "input_hw"), ({"input_hw": (8,)}, "input_hw"),
    ({"input_hw": 224}, "input_hw"),
    ({"std": (0.2, 0.0, 0.2)}, "std"), ({"mean": (0.5, 0.5)}, "mean"),
    ({"dtype": torch.int8}, "dtype")])
def test_bad_configuration(kwargs, match):
    args = {"input_hw": (8, 8), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "device": CPU}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        Preprocessor(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Preprocessor((8, 8), IMAGENET_MEAN, IMAGENET_STD, torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_reference():
    rgb = _photo(96, 128)
    pre = Preprocessor((64, 64), IMAGENET_MEAN, IMAGENET_STD, torch.device("cuda"),
                       dtype=torch.float16, channels_last=True)
    for _ in range(3):  # reuses the pinned buffer
        out = pre(rgb)
    assert out.device.type == "cuda" and out.dtype == torch.float16
    assert (out.float().cpu() - _reference(rgb, (64, 64))).abs().max().item() < 0.01
    assert pre.depth(np.ones((48, 64), np.float32)).device.type == "cuda"
