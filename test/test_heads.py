"""DepthHead and DetectionHead on real models and real footage."""
from __future__ import annotations

import math
from typing import List

import cv2
import numpy as np
import pytest
import torch

from robot_vision_ros.core.detections import ObjectTable
from robot_vision_ros.core.errors import ConfigError, InputError, UnknownModelError
from robot_vision_ros.core.frames import CameraIntrinsics, RgbdFrame
from robot_vision_ros.core.heads import DepthHead, DetectionHead
from robot_vision_ros.tracking import TrackerConfig

from conftest import asset_path

CPU = torch.device("cpu")
SMALL_DECODER = (64, 32, 16, 16, 8)


# --- DepthHead ------------------------------------------------------------------------------

def _rgbd(h: int = 96, w: int = 128, with_sensor: bool = True) -> RgbdFrame:
    """Random texture with a slanted sensor plane (1-4.5 m), a NaN hole and a zero band."""
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    sensor = (1.0 + 0.02 * xx + 0.01 * yy).astype(np.float32)
    sensor[20:40, 30:60] = np.nan
    sensor[60:70, :] = 0.0
    return RgbdFrame(rgb=rgb, stamp_ns=1_000_000_000, depth_m=sensor if with_sensor else None)


@pytest.fixture(scope="module")
def unet_head() -> DepthHead:
    torch.manual_seed(0)
    return DepthHead("unet", "", (64, 96), CPU, min_m=0.1, max_m=10.0,
                     options={"encoder": "resnet18", "decoder_channels": SMALL_DECODER})


def test_sensor_head_cleans_zeros_and_nan():
    frame = _rgbd()
    head = DepthHead("sensor", "", (64, 96), CPU, min_m=0.5, max_m=4.0)
    result = head.run(frame)
    assert result.source == "sensor" and result.depth_m.dtype == np.float32
    assert result.depth_m.shape == (96, 128)
    assert np.isnan(result.depth_m[20:40, 30:60]).all() and np.isnan(result.depth_m[60:70]).all()
    assert np.isnan(result.depth_m[frame.depth_m > 4.0]).all()  # beyond max_m: unknown
    keep = np.isfinite(frame.depth_m) & (frame.depth_m > 0) & (frame.depth_m <= 4.0)
    np.testing.assert_array_equal(result.depth_m[keep], frame.depth_m[keep])
    assert math.isnan(result.fit_residual_m) and head.network is None
    # Without sensor depth there is nothing to publish.
    empty = head.run(_rgbd(with_sensor=False))
    assert empty.source == "none" and np.isnan(empty.depth_m).all()
    assert empty.depth_m.shape == (96, 128)


def test_none_head_gives_unknown_depth():
    head = DepthHead("none", "", (64, 96), CPU, min_m=0.1, max_m=10.0)
    result = head.run(_rgbd())
    assert not head.enabled
    assert result.source == "none" and np.isnan(result.depth_m).all()
    assert result.depth_m.shape == (96, 128) and result.depth_m.dtype == np.float32


def test_unet_fused_keeps_sensor_pixels_and_fills_holes(unet_head):
    frame = _rgbd()
    result = unet_head.run(frame)
    assert result.source == "fused"
    assert result.depth_m.shape == (96, 128) and result.depth_m.dtype == np.float32
    valid = np.isfinite(frame.depth_m) & (frame.depth_m > 0)
    np.testing.assert_array_equal(result.depth_m[valid], frame.depth_m[valid])
    holes = ~valid
    assert np.isfinite(result.depth_m[holes]).all()
    assert (result.depth_m[holes] >= 0.1).all() and (result.depth_m[holes] <= 10.0).all()
    assert math.isfinite(result.fit_residual_m) and 0.0 < result.inlier_fraction <= 1.0
    assert {"preprocess_ms", "network_ms", "fusion_ms"} <= set(result.timings_ms)


def test_unet_without_sensor_is_metric_network_depth(unet_head):
    result = unet_head.run(_rgbd(with_sensor=False))
    assert result.source == "network"
    assert result.depth_m.shape == (96, 128)
    assert np.isfinite(result.depth_m).all()
    assert result.depth_m.min() >= 0.1 and result.depth_m.max() <= 10.0
    assert math.isnan(result.fit_residual_m)


@pytest.fixture(scope="module")
def tiny_depth_anything(tmp_path_factory) -> str:
    """A randomly initialised, tiny relative Depth Anything V2 saved as the real one is."""
    transformers = pytest.importorskip(
        "transformers", reason="depth_anything_v2 needs transformers==5.23.0")
    backbone = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2,
        image_size=56, patch_size=14, out_indices=[0, 1, 2, 3], reshape_hidden_states=False)
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 16, 32],
        fusion_hidden_size=16, head_hidden_size=8)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("depth_anything")
    transformers.DepthAnythingForDepthEstimation(config).save_pretrained(directory)
    return str(directory)


def test_relative_network_needs_the_sensor_for_metres(tiny_depth_anything):
    head = DepthHead("depth_anything_v2", tiny_depth_anything, (56, 70), CPU, min_m=0.1,
                     max_m=10.0)
    assert head.output_kind == "relative_disparity"
    alone = head.run(_rgbd(with_sensor=False))
    assert alone.source == "none" and np.isnan(alone.depth_m).all()
    frame = _rgbd()
    fused = head.run(frame)
    assert fused.source in ("fused", "sensor")  # 'sensor' when the fit is rejected
    valid = np.isfinite(frame.depth_m) & (frame.depth_m > 0)
    np.testing.assert_array_equal(fused.depth_m[valid], frame.depth_m[valid])
    assert math.isfinite(fused.inlier_fraction)  # a fit was attempted


def test_depth_head_bad_arguments():
    with pytest.raises(UnknownModelError, match="unknown depth model 'midas'; known:"):
        DepthHead("midas", "", (64, 96), CPU, min_m=0.1, max_m=10.0)
    with pytest.raises(ConfigError, match="0 <= min_m < max_m"):
        DepthHead("sensor", "", (64, 96), CPU, min_m=5.0, max_m=1.0)


# --- DetectionHead on real footage ------------------------------------------------------------

VTEST_HW = (576, 768)
STAMP0_NS = 1_700_000_000_000_000_000  # a realistic ROS time, not 0
PERIOD_NS = 100_000_000  # vtest.avi is 10 Hz


@pytest.fixture(scope="module")
def vtest_frames() -> List[RgbdFrame]:
    cap = cv2.VideoCapture(str(asset_path("vtest.avi")))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 100)
    frames = []
    for k in range(12):
        ok, bgr = cap.read()
        if not ok:
            raise RuntimeError("vtest.avi ended early")
        frames.append(RgbdFrame(rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                                stamp_ns=STAMP0_NS + k * PERIOD_NS))
    cap.release()
    return frames


def _detection_head() -> DetectionHead:
    return DetectionHead("onnx", {"path": str(asset_path("ssdlite_person.onnx")),
                                  "layout": "auto", "score_threshold": 0.3,
                                  "intra_op_num_threads": 2},
                         TrackerConfig(frame_rate_hz=10.0), class_names=None)


def _with_depth_plane(frame: RgbdFrame, z_m: float):
    h, w = VTEST_HW
    intrinsics = CameraIntrinsics(fx=600.0, fy=600.0, cx=(w - 1) / 2, cy=(h - 1) / 2,
                                  width=w, height=h)
    framed = RgbdFrame(rgb=frame.rgb, stamp_ns=frame.stamp_ns, intrinsics=intrinsics)
    return framed, np.full((h, w), z_m, np.float32)


def test_tracks_keep_ids_and_predict_between_detector_runs(vtest_frames):
    head = _detection_head()
    n_detections, ids_seen = 0, set()
    last_run: ObjectTable = None  # type: ignore[assignment]
    for k, frame in enumerate(vtest_frames):
        if k % 2 == 0:  # the detector runs on every other frame
            table = head.run(frame, None)
            n_detections += head.last_num_detections
            ids_seen |= set(table.tracks.track_ids.tolist())
            assert not table.tracks.is_predicted.any()
            last_run = table
        else:
            table = head.predict(frame, None)
            assert table.tracks.is_predicted.all()
            assert set(table.tracks.track_ids.tolist()) == \
                set(last_run.tracks.track_ids.tolist())
        assert set(table.class_names[c] for c in table.tracks.class_ids) <= {"person"}
        assert np.isnan(table.xyz_m).all()  # no depth given
    assert len(last_run) >= 3 and n_detections >= 20
    # Stable ids: far fewer distinct ids than detections (6 runs of ~4.5 people).
    assert len(ids_seen) <= n_detections / 2, (ids_seen, n_detections)


def test_positions_from_a_depth_plane(vtest_frames):
    head = _detection_head()
    for frame in vtest_frames[:3]:
        framed, depth = _with_depth_plane(frame, 3.0)
        table = head.run(framed, depth)
    assert len(table) >= 3
    assert np.isfinite(table.xyz_m).all() and np.isfinite(table.extent_m).all()
    np.testing.assert_allclose(table.xyz_m[:, 2], 3.0, rtol=1e-6)
    # People are taller than wide, and at 3 m with f = 600 px about 0.3-2 m tall.
    assert (table.extent_m[:, 1] > table.extent_m[:, 0]).all()
    framed, depth = _with_depth_plane(vtest_frames[3], 3.0)
    predicted = head.predict(framed, depth)
    np.testing.assert_allclose(predicted.xyz_m[:, 2], 3.0, rtol=1e-6)
    # Without intrinsics the positions stay unknown.
    assert np.isnan(head.run(vtest_frames[4], depth).xyz_m).all()


def test_two_heads_have_independent_ids(vtest_frames):
    first, second = _detection_head(), _detection_head()
    # Interleaved on the same frames, each head numbers its own tracks from 1: the
    # tables are identical, so no id counter or track state is shared.
    for frame in vtest_frames[:4]:
        a = first.run(frame, None)
        b = second.run(frame, None)
        np.testing.assert_array_equal(a.tracks.track_ids, b.tracks.track_ids)
        np.testing.assert_array_equal(a.tracks.boxes_xyxy, b.tracks.boxes_xyxy)
    assert len(b) >= 3 and b.tracks.track_ids.min() == 1


def test_stamp_backwards_propagates_and_reset_recovers(vtest_frames):
    head = _detection_head()
    head.run(vtest_frames[2], None)
    with pytest.raises(InputError, match="before the previous stamp") as err:
        head.run(vtest_frames[1], None)
    assert err.value.reason == "stamp_backwards"
    head.reset()
    table = head.run(vtest_frames[1], None)
    assert len(table) >= 3 and table.tracks.track_ids.min() > 1  # ids keep counting up


def test_bad_depth_is_rejected_before_the_tracker_moves(vtest_frames):
    head = _detection_head()
    framed, _ = _with_depth_plane(vtest_frames[0], 2.0)
    with pytest.raises(InputError, match="at the RGB resolution 576x768") as err:
        head.run(framed, np.full((288, 384), 2.0, np.float32))
    assert err.value.reason == "bad_size"
    wrong_k = RgbdFrame(rgb=framed.rgb, stamp_ns=framed.stamp_ns,
                        intrinsics=framed.intrinsics.scaled(384, 288))
    with pytest.raises(InputError, match="intrinsics are for 384x288") as err:
        head.run(wrong_k, np.full(VTEST_HW, 2.0, np.float32))
    assert err.value.reason == "bad_size"
    assert len(head.tracker) == 0  # nothing was tracked by the rejected calls
    with pytest.raises(ConfigError, match="class_names given twice"):
        DetectionHead("onnx", {"path": "x.onnx", "class_names": ["a"]}, None, ["person"])
