"""Depth models (unet, Depth Anything V2) and sensor-depth fusion."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_vision_ros.core.depth_fusion import (ScaleShiftFit, clean_sensor_depth,
                                                depth_metrics, fit_scale_shift, fuse_depth,
                                                nearest_fill)
from robot_vision_ros.core.errors import ConfigError, InputError, WeightsError
from robot_vision_ros.models.depth.base import DepthModel, scale_invariant_log_loss
from robot_vision_ros.models.depth.unet import imagenet_cache_path, save_unet_weights
from robot_vision_ros.models.registry import create_model, list_models

SMALL_DECODER = (64, 32, 16, 16, 8)


def _unet(**kwargs) -> DepthModel:
    kwargs.setdefault("decoder_channels", SMALL_DECODER)
    return create_model("unet", kind="depth", **kwargs)


# --- synthetic RGB-D scene ----------------------------------------------------

def _scene_depth_m(h: int, w: int) -> np.ndarray:
    """A floor-to-wall ramp (2..6 m, top far) with a box at 1.2 m in front."""
    rows = np.linspace(6.0, 2.0, h, dtype=np.float64)[:, None]
    depth = np.repeat(rows, w, axis=1)
    depth[h // 4: h // 2, w // 3: 2 * w // 3] = 1.2
    return depth


def _scene_rgb(depth_m: np.ndarray) -> np.ndarray:
    """Colours that determine depth: grey ramp for the plane, red for the box."""
    grey = (depth_m - 1.0) / 6.0
    rgb = np.stack([grey, grey, grey], axis=-1)
    box = depth_m < 1.5
    rgb[box] = (0.9, 0.1, 0.1)
    return rgb.astype(np.float32)


def _blob_holes(shape: tuple, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask with ~``fraction`` of the pixels removed in round blobs."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    holes = np.zeros(shape, dtype=bool)
    while holes.mean() < fraction:
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, 12)
        holes |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return holes


# --- unet -------------------------------------------------------------------

def test_depth_registry_lists_models():
    assert {"unet", "depth_anything_v2"} <= set(list_models("depth"))


@pytest.mark.parametrize("encoder", ["resnet18", "resnet34", "mobilenet_v3_large",
                                     "mobilenet_v2"])
def test_unet_each_encoder_gives_bounded_metric_depth(encoder):
    model = _unet(encoder=encoder, min_depth_m=0.3, max_depth_m=8.0).eval()
    assert model.is_metric and model.output_kind == "metric"
    with torch.no_grad():
        depth = model(torch.randn(2, 3, 64, 64))
        odd = model(torch.randn(1, 3, 50, 70))  # not a multiple of 32: still input size
    assert depth.shape == (2, 1, 64, 64) and odd.shape == (1, 1, 50, 70)
    assert torch.isfinite(depth).all()
    assert depth.min() >= 0.3 and depth.max() <= 8.0


def test_unet_full_decoder_on_96x128():
    model = create_model("unet", kind="depth", encoder="resnet18").eval()
    with torch.no_grad():
        depth = model(torch.randn(1, 3, 96, 128))
    assert depth.shape == (1, 1, 96, 128) and torch.isfinite(depth).all()
    assert 0.1 <= float(depth.min()) and float(depth.max()) <= 10.0


def test_unet_rejects_bad_configuration_and_input():
    with pytest.raises(ConfigError, match="unknown unet encoder 'vgg11'.*resnet18"):
        _unet(encoder="vgg11")
    with pytest.raises(ConfigError, match="min_depth_m < max_depth_m"):
        _unet(min_depth_m=5.0, max_depth_m=1.0)
    with pytest.raises(ConfigError, match="encoder_weights='imagenet'"):
        _unet(weights="imagenet")
    model = _unet(encoder="mobilenet_v2")
    with pytest.raises(InputError, match=r"expects \[B, 3, H, W\]") as err:
        model(torch.randn(1, 1, 32, 32))
    assert err.value.reason == "bad_size"


def test_unet_trains_on_one_rgbd_pair():
    torch.manual_seed(0)
    depth = _scene_depth_m(64, 64)
    rgb = _scene_rgb(depth)
    # mobilenet_v2 is the lightest encoder: a few dozen steps stay cheap on 2 cores.
    model = _unet(encoder="mobilenet_v2", min_depth_m=0.5, max_depth_m=8.0)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(rgb).permute(2, 0, 1)[None] - mean) / std
    target = torch.from_numpy(depth).float()[None, None]
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[..., :4, :] = False  # a strip without sensor depth
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(24):
        optimiser.zero_grad()
        loss = scale_invariant_log_loss(model(x), target, valid, lam=0.85)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses


def test_scale_invariant_loss_masks_and_scale():
    torch.manual_seed(1)
    target = torch.rand(2, 1, 16, 16) * 5 + 0.5
    pred = target * torch.exp(0.1 * torch.randn_like(target))
    mask = torch.rand_like(target) > 0.3
    base = scale_invariant_log_loss(pred, target, mask, lam=0.85)
    garbage = torch.where(mask, pred, torch.full_like(pred, 1e4))
    assert torch.allclose(scale_invariant_log_loss(garbage, target, mask, lam=0.85), base)
    # lam = 1: a global scale of the prediction changes nothing.
    l1 = scale_invariant_log_loss(pred, target, mask, lam=1.0)
    assert torch.allclose(scale_invariant_log_loss(3.7 * pred, target, mask, lam=1.0), l1,
                          atol=1e-6)
    assert scale_invariant_log_loss(2.0 * target, target, lam=1.0) < 1e-10
    assert scale_invariant_log_loss(2.0 * target, target, lam=0.0) > 0.4  # log(2)^2
    # NaN and zero targets are not valid pixels and do not poison the gradient.
    bad_target = target.clone()
    bad_target[0, 0, :4] = float("nan")
    bad_target[0, 0, 4:6] = 0.0
    pred = pred.clone().requires_grad_(True)
    loss = scale_invariant_log_loss(pred, bad_target, lam=0.85)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    with pytest.raises(InputError, match="differ in shape"):
        scale_invariant_log_loss(pred, target[:, :, :8])


def test_unet_weights_round_trip(tmp_path):
    model = _unet(encoder="mobilenet_v2").eval()
    x = torch.randn(1, 3, 64, 64)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    loaded = _unet(encoder="mobilenet_v2", weights=str(plain)).eval()
    with_config = tmp_path / "with_config.pt"
    save_unet_weights(model, with_config)
    loaded2 = _unet(encoder="mobilenet_v2", weights=str(with_config)).eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model(x), loaded2(x))
    with pytest.raises(WeightsError, match="max_depth_m=10.0 in the file but 20.0 here"):
        _unet(encoder="mobilenet_v2", max_depth_m=20.0, weights=str(with_config))
    with pytest.raises(WeightsError, match="does not fit unet\\(mobilenet_v3_large\\)"):
        _unet(encoder="mobilenet_v3_large", weights=str(plain))


def test_unet_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsError) as err:
        _unet(weights=str(missing))
    assert str(missing) in str(err.value)
    assert "python -m robot_vision_ros.tools.train_depth" in str(err.value)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pt is not a weights file"):
        _unet(weights=str(garbage))


def test_unet_encoder_imagenet_weights_from_file_and_cache(asset, tmp_path, monkeypatch):
    weights_file = asset("mobilenet_v2-b0353104.pth")
    reference = torch.load(weights_file, map_location="cpu", weights_only=True)
    model = _unet(encoder="mobilenet_v2", encoder_weights=str(weights_file))
    first_conv = model.stages[0][0][0].weight
    assert torch.equal(first_conv, reference["features.0.0.weight"])

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = imagenet_cache_path("mobilenet_v2")
    assert cached == tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    with pytest.raises(WeightsError) as err:
        _unet(encoder="mobilenet_v2", encoder_weights="imagenet")
    assert str(cached) in str(err.value) and "download.pytorch.org" in str(err.value)
    cached.parent.mkdir(parents=True)
    os.symlink(weights_file, cached)
    model = _unet(encoder="mobilenet_v2", encoder_weights="imagenet")
    assert torch.equal(model.stages[0][0][0].weight, reference["features.0.0.weight"])


# --- Depth Anything V2 --------------------------------------------------------

def _save_tiny_depth_anything(directory: Path, metric: bool = False) -> None:
    transformers = pytest.importorskip(
        "transformers", reason="depth_anything_v2 needs transformers==5.23.0")
    backbone = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2,
        image_size=56, patch_size=14, out_indices=[0, 1, 2, 3], reshape_hidden_states=False)
    extra = {"depth_estimation_type": "metric", "max_depth": 20} if metric else {}
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 16, 32],
        fusion_hidden_size=16, head_hidden_size=8, **extra)
    torch.manual_seed(0)
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(directory)


def test_depth_anything_tiny_round_trip(tmp_path):
    _save_tiny_depth_anything(tmp_path / "relative")
    model = create_model("depth_anything_v2", kind="depth", weights=str(tmp_path / "relative"))
    assert model.output_kind == "relative_disparity" and not model.is_metric
    assert model.size_multiple == 14
    with torch.no_grad():
        out = model(torch.randn(2, 3, 56, 70))
        odd = model(torch.randn(1, 3, 60, 64))  # resized to /14 inside, back to 60x64
    assert out.shape == (2, 1, 56, 70) and odd.shape == (1, 1, 60, 64)
    assert torch.isfinite(out).all() and torch.isfinite(odd).all()

    _save_tiny_depth_anything(tmp_path / "metric", metric=True)
    metric = create_model("depth_anything_v2", kind="depth", weights=str(tmp_path / "metric"),
                          input_size=42)
    assert metric.output_kind == "metric" and metric.is_metric and metric.max_depth_m == 20
    assert metric.network_size(60, 80) == (42, 56)
    with torch.no_grad():
        depth = metric(torch.randn(1, 3, 60, 80))
    assert depth.shape == (1, 1, 60, 80)
    assert torch.isfinite(depth).all() and 0 <= float(depth.min()) <= float(depth.max()) <= 20


def test_depth_anything_missing_or_empty_directory(tmp_path):
    missing = tmp_path / "da2-small"
    with pytest.raises(WeightsError) as err:
        create_model("depth_anything_v2", kind="depth", weights=str(missing))
    message = str(err.value)
    assert str(missing) in message and "does not exist" in message
    assert "huggingface-cli download depth-anything/Depth-Anything-V2-Small-hf" in message
    missing.mkdir()
    with pytest.raises(WeightsError, match="lacks config.json and model.safetensors"):
        create_model("depth_anything_v2", kind="depth", weights=str(missing))
    with pytest.raises(WeightsError, match="needs weights: a local directory"):
        create_model("depth_anything_v2", kind="depth", weights="")


# --- scale/shift fit --------------------------------------------------------

def _relative_field(shape=(60, 80), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 1.0, size=shape)


@pytest.mark.parametrize("space", ["depth", "disparity"])
def test_fit_recovers_scale_and_shift_exactly(space):
    pred = _relative_field()
    aligned = 3.0 * pred + 0.5 if space == "depth" else 2.0 * pred + 0.2
    sensor = aligned if space == "depth" else 1.0 / aligned
    fit = fit_scale_shift(pred, sensor, space=space)
    assert fit.valid and fit.space == space and fit.n_valid == pred.size
    expected = (3.0, 0.5) if space == "depth" else (2.0, 0.2)
    assert fit.scale == pytest.approx(expected[0], rel=1e-9)
    assert fit.shift == pytest.approx(expected[1], rel=1e-9, abs=1e-9)
    assert fit.inlier_fraction == 1.0 and fit.residual_m < 1e-9
    np.testing.assert_allclose(fit.apply(pred), sensor, rtol=1e-6)


@pytest.mark.parametrize("space", ["depth", "disparity"])
def test_fit_is_robust_to_20_percent_gross_outliers(space):
    rng = np.random.default_rng(3)
    pred = _relative_field(seed=4)
    sensor = 3.0 * pred + 0.5 if space == "depth" else 1.0 / (2.0 * pred + 0.2)
    outliers = rng.random(pred.shape) < 0.2
    sensor = sensor.copy()
    sensor[outliers] = rng.uniform(0.2, 20.0, size=int(outliers.sum()))
    fit = fit_scale_shift(pred, sensor, space=space)
    expected = (3.0, 0.5) if space == "depth" else (2.0, 0.2)
    assert fit.valid
    assert fit.scale == pytest.approx(expected[0], rel=0.02)
    assert fit.shift == pytest.approx(expected[1], rel=0.05)
    assert 0.75 < fit.inlier_fraction < 0.85
    # A plain least-squares fit is far off on the same data: the test is not trivial.
    y = sensor.ravel() if space == "depth" else 1.0 / sensor.ravel()
    ls_scale = np.polyfit(pred.ravel(), y, 1)[0]
    assert abs(ls_scale - expected[0]) / expected[0] > 0.1


def test_fit_with_too_few_pixels_or_constant_prediction_is_invalid():
    pred = _relative_field()
    sensor = np.full(pred.shape, np.nan)
    sensor[:5, :10] = 2.0 * pred[:5, :10] + 1.0  # 50 valid pixels
    fit = fit_scale_shift(pred, sensor, min_valid=100)
    assert not fit.valid and fit.n_valid == 50 and "50 valid sensor pixels" in fit.reason
    assert math.isnan(fit.scale)
    assert fit_scale_shift(pred, sensor, min_valid=20).valid
    flat = fit_scale_shift(np.ones((20, 20)), np.full((20, 20), 2.0))
    assert not flat.valid and "constant" in flat.reason
    empty = fit_scale_shift(pred, np.zeros(pred.shape))
    assert not empty.valid and empty.n_valid == 0


def test_fit_ignores_nan_zero_inf_sensor_values_and_masked_pixels():
    pred = _relative_field()
    sensor = 3.0 * pred + 0.5
    sensor[0, :] = np.nan
    sensor[1, :] = 0.0
    sensor[2, :] = np.inf
    sensor[3, :] = -1.0
    mask = np.ones(pred.shape, dtype=bool)
    sensor[4, :] = 100.0  # wrong, but masked out
    mask[4, :] = False
    fit = fit_scale_shift(pred, sensor, valid_mask=mask)
    assert fit.n_valid == pred.size - 5 * pred.shape[1]
    assert fit.scale == pytest.approx(3.0, rel=1e-9) and fit.shift == pytest.approx(0.5)


def test_fit_rejects_mismatched_shapes_and_dtypes():
    with pytest.raises(InputError, match=r"\(60, 80\) and sensor_depth_m \(60, 81\)") as err:
        fit_scale_shift(np.ones((60, 80)), np.ones((60, 81)))
    assert err.value.reason == "bad_size"
    with pytest.raises(InputError, match="floating point metres") as err:
        fit_scale_shift(np.ones((4, 4)), np.ones((4, 4), dtype=np.uint16))
    assert err.value.reason == "bad_dtype"
    with pytest.raises(InputError, match="valid_mask") as err:
        fit_scale_shift(np.ones((4, 4)), np.ones((4, 4)), valid_mask=np.ones((4, 5)))
    assert err.value.reason == "bad_size"
    with pytest.raises(ConfigError, match="space must be one of depth, disparity"):
        fit_scale_shift(np.ones((4, 4)), np.ones((4, 4)), space="log")


# --- fusion ---------------------------------------------------------------

def _fusion_scene(seed: int = 0):
    rng = np.random.default_rng(seed)
    gt = _scene_depth_m(120, 160)
    holes = _blob_holes(gt.shape, 0.3, rng)
    sensor = gt.copy()
    sensor[holes] = 0.0
    # Right shape, wrong scale and shift, in disparity, with 1 % noise.
    disparity = (0.37 / gt + 0.05) * (1 + 0.01 * rng.standard_normal(gt.shape))
    return gt, sensor.astype(np.float32), holes, disparity.astype(np.float32)


def test_fusion_keeps_sensor_fills_holes_and_beats_nearest_fill():
    gt, sensor, holes, disparity = _fusion_scene()
    assert 0.29 < holes.mean() < 0.4
    fused = fuse_depth(disparity, sensor, "relative_disparity")
    assert fused.source == "fused" and isinstance(fused.fit, ScaleShiftFit) and fused.fit.valid
    assert fused.depth_m.dtype == np.float32 and fused.depth_m.shape == gt.shape
    np.testing.assert_array_equal(fused.depth_m[~holes], sensor[~holes])
    assert not np.isnan(fused.depth_m).any()
    ours = depth_metrics(fused.depth_m, gt, holes)
    baseline = depth_metrics(nearest_fill(sensor), gt, holes)
    assert ours["coverage"] == 1.0 and baseline["coverage"] == 1.0
    assert ours["abs_rel"] < 0.03
    assert ours["abs_rel"] < 0.5 * baseline["abs_rel"], (ours, baseline)
    assert ours["rmse_m"] < baseline["rmse_m"]


def test_fusion_in_relative_depth_space_and_metric_alignment():
    gt, sensor, holes, _ = _fusion_scene(seed=1)
    relative_depth = (gt - 0.4) / 2.5  # affine in depth
    fused = fuse_depth(relative_depth, sensor, "relative_depth")
    assert fused.fit.space == "depth" and fused.fit.scale == pytest.approx(2.5, rel=1e-6)
    np.testing.assert_allclose(fused.depth_m, gt, rtol=1e-5)
    metric = 1.1 * gt  # a metric net that is 10 % long
    aligned = fuse_depth(metric, sensor, "metric")
    assert aligned.source == "fused" and aligned.fit.valid
    np.testing.assert_allclose(aligned.depth_m[holes], gt[holes], rtol=1e-5)
    raw = fuse_depth(metric, sensor, "metric", align_metric=False, local_correction=False)
    assert raw.fit is None
    np.testing.assert_allclose(raw.depth_m[holes], metric[holes], rtol=1e-6)
    # Without the global fit, the local sensor/prediction ratio still corrects the scale.
    local = fuse_depth(metric, sensor, "metric", align_metric=False)
    np.testing.assert_allclose(local.depth_m[holes], gt[holes], rtol=1e-5)


def test_local_correction_follows_local_errors_a_global_fit_cannot():
    gt, sensor, holes, _ = _fusion_scene(seed=2)
    # A prediction whose error varies across the image (left half 20% short).
    pred = gt.copy()
    pred[:, : gt.shape[1] // 2] *= 0.8
    global_only = fuse_depth(pred, sensor, "metric", local_correction=False)
    local = fuse_depth(pred, sensor, "metric")
    err_global = depth_metrics(global_only.depth_m, gt, holes)["abs_rel"]
    err_local = depth_metrics(local.depth_m, gt, holes)["abs_rel"]
    assert err_local < 0.5 * err_global, (err_local, err_global)


def test_fusion_without_sensor_or_without_prediction():
    gt, sensor, holes, disparity = _fusion_scene()
    metric = fuse_depth(gt.astype(np.float32)[None, None], None, "metric")
    assert metric.source == "network" and metric.fit is None
    np.testing.assert_allclose(metric.depth_m, gt, rtol=1e-6)
    relative = fuse_depth(disparity, None, "relative_disparity")
    assert relative.source == "network" and np.isnan(relative.depth_m).all()
    only_sensor = fuse_depth(None, sensor, "metric", max_depth_m=5.0)
    assert only_sensor.source == "sensor" and only_sensor.fit is None
    assert np.isnan(only_sensor.depth_m[holes]).all()
    assert np.isnan(only_sensor.depth_m[gt > 5.0]).all()
    keep = ~holes & (gt <= 5.0)
    np.testing.assert_array_equal(only_sensor.depth_m[keep], sensor[keep])
    with pytest.raises(InputError, match="needs a prediction, a sensor depth image or both"):
        fuse_depth(None, None, "metric")
    with pytest.raises(ConfigError, match="output_kind must be one of"):
        fuse_depth(disparity, sensor, "disparity")


def test_fusion_with_too_few_sensor_pixels_does_not_crash():
    gt, _, _, disparity = _fusion_scene()
    sensor = np.full(gt.shape, np.nan, dtype=np.float32)
    sensor[:3, :3] = gt[:3, :3]
    fused = fuse_depth(disparity, sensor, "relative_disparity")
    assert fused.source == "sensor" and not fused.fit.valid
    assert np.isnan(fused.depth_m).sum() == gt.size - 9
    metric = fuse_depth(gt.astype(np.float32), sensor, "metric")
    assert metric.source == "fused" and not metric.fit.valid
    assert not np.isnan(metric.depth_m).any()


def test_fusion_handles_nan_zero_inf_sensor_and_bad_shapes():
    gt, sensor, holes, disparity = _fusion_scene()
    sensor = sensor.copy()
    sensor[holes] = np.nan
    sensor[0, :] = np.inf
    sensor[1, :] = -np.inf
    sensor[2, :] = 0.0
    fused = fuse_depth(disparity, sensor, "relative_disparity")
    assert np.isfinite(fused.depth_m).all()
    # Rows 0-2 had no valid reading: filled from the prediction (1 % disparity noise).
    assert np.mean(np.abs(fused.depth_m[:3] - gt[:3]) / gt[:3]) < 0.03
    with pytest.raises(InputError, match="resize the prediction") as err:
        fuse_depth(disparity[:, :100], sensor, "relative_disparity")
    assert err.value.reason == "bad_size"
    with pytest.raises(InputError) as err:
        fuse_depth(np.ones((2, 3, 4), dtype=np.float32), sensor, "metric")
    assert err.value.reason == "bad_size"


def test_clean_sensor_depth_and_nearest_fill():
    raw = np.array([[1.0, 0.0, np.nan, 4.0],
                    [np.inf, 2.0, 30.0, -1.0]], dtype=np.float32)
    clean = clean_sensor_depth(raw, min_depth_m=0.5, max_depth_m=10.0)
    expected = np.array([[1.0, np.nan, np.nan, 4.0],
                         [np.nan, 2.0, np.nan, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(clean, expected)
    filled = nearest_fill(raw, min_depth_m=0.5, max_depth_m=10.0)
    np.testing.assert_array_equal(filled, [[1.0, 1.0, 4.0, 4.0], [1.0, 2.0, 2.0, 4.0]])
    assert np.isnan(nearest_fill(np.zeros((3, 3), dtype=np.float32))).all()


def test_depth_metrics_known_values():
    gt = np.linspace(1.0, 5.0, 100).reshape(10, 10)
    perfect = depth_metrics(gt, gt)
    assert perfect["abs_rel"] == 0 and perfect["rmse_m"] == 0 and perfect["delta1"] == 1.0
    long = depth_metrics(1.1 * gt, gt)
    assert long["abs_rel"] == pytest.approx(0.1) and long["delta1"] == 1.0
    assert long["rmse_m"] == pytest.approx(0.1 * np.sqrt(np.mean(gt ** 2)))
    assert depth_metrics(1.3 * gt, gt)["delta1"] == 0.0
    partial = 1.1 * gt
    partial[:5] = np.nan
    m = depth_metrics(partial, gt, mask=gt > 0)
    assert m["coverage"] == 0.5 and m["n_pixels"] == 50
    none = depth_metrics(np.full_like(gt, np.nan), gt)
    assert none["n_pixels"] == 0 and math.isnan(none["abs_rel"])
