"""ONNX Runtime INT8, calibration from bags and live frames, INT8 heads and their guards.

Real models (MobileNetV2 ImageNet weights, the SSDLite person detector, U-Net
depth), real frames (vtest.avi), a real ROS 2 bag written with rosbags, and
two cross-process node runs with ``compression.calibration: live``.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest
import torch

from robot_vision_ros.compression import check_fidelity, compress, load_calibration_frames
from robot_vision_ros.compression.apply import split_frames
from robot_vision_ros.compression.calibration import normalise_frames, read_video_frames
from robot_vision_ros.compression.heads import box_agreement, compress_detector
from robot_vision_ros.compression.live import (ACTIVE, FAILED, LiveCompression,
                                               compression_status)
from robot_vision_ros.compression.ort_quantize import OrtEncoder
from robot_vision_ros.core.config import validate
from robot_vision_ros.core.detections import Detections
from robot_vision_ros.core.errors import ConfigError, ModelError
from robot_vision_ros.core.frames import RgbdFrame
from robot_vision_ros.core.perception import PerceptionPipeline
from robot_vision_ros.core.pipeline import EncoderPipeline
from robot_vision_ros.models.registry import create_model

from bag_writer import write_image_bag
from conftest import asset_path

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
SMALL = {"backbone": "realtime", "output_dim": 0, "input_size": [64, 64], "num_threads": 1}


@functools.lru_cache(maxsize=None)
def _vtest(count: int) -> List[np.ndarray]:
    return read_video_frames(asset_path("vtest.avi"), count)


def _frame(rgb: np.ndarray, stamp: int) -> RgbdFrame:
    return RgbdFrame(rgb=rgb, stamp_ns=stamp)


# -- ONNX Runtime INT8 of the encoder ---------------------------------------------------
def test_ort_int8_real_mobilenet_v2_stays_close_and_the_guard_names_the_figure() -> None:
    encoder = create_model("mobilenet_v2", output_dim=0,
                           weights=str(asset_path(MOBILENET_V2_FILE))).eval()
    frames = normalise_frames(_vtest(12), (96, 96))
    model, report = compress(encoder, "int8", {"method": "auto"}, frames,
                             backend="onnxruntime", input_hw=(96, 96), threads=1)
    assert isinstance(model, OrtEncoder) and report["engine"] == "onnxruntime"
    assert report["method"] == "static" and report["calibrate_method"] == "percentile"
    assert report["onnx_bytes_after"] < report["onnx_bytes_before"] / 3  # INT8 weights
    assert 0.97 < report["fidelity"]["cosine"] <= 1.0
    _, held_out = split_frames(frames)
    figure = check_fidelity(encoder, model, held_out, 0.9)
    assert figure == pytest.approx(report["fidelity"]["cosine"])
    with pytest.raises(ConfigError, match=rf"fidelity cosine = {figure:.4f} on 3 frames is "
                                          r"below compression.min_fidelity = 1.0000"):
        check_fidelity(encoder, model, held_out, 1.0)
    out = model.encode(frames[:2])
    assert out.pooled.shape == (2, 1280) and out.tokens.shape == (2, 9, 1280)


def test_pipeline_with_onnxruntime_int8_runs_the_quantised_session() -> None:
    cfg = validate(dict(SMALL, backend="onnxruntime", **{
        "compression.mode": "int8", "compression.calibration": str(asset_path("vtest.avi")),
        "compression.calibration_frames": 8, "compression.calibrate_method": "minmax"}))
    pipeline = EncoderPipeline.from_config(cfg)
    assert isinstance(pipeline.encoder, OrtEncoder)
    guard = pipeline.compression["guard"]
    assert guard["metric"] == "cosine" and 0.95 <= guard["value"] <= 1.0
    result = pipeline.process(_frame(_vtest(12)[5], 1))
    assert result.pooled.shape == (pipeline.output_dim,) and np.isfinite(result.pooled).all()
    with pytest.raises(ConfigError, match="below compression.min_fidelity = 1.0000"):
        EncoderPipeline.from_config(cfg.replace(**{"compression.min_fidelity": 1.0}))


def test_prune_and_int8_are_allowed_with_onnxruntime_but_heads_need_int8() -> None:
    assert validate({"backend": "onnxruntime", "compression.mode": "prune"}).backend == \
        "onnxruntime"
    with pytest.raises(ConfigError, match="compression.heads=true quantises the heads to "
                                          "INT8: it needs compression.mode='int8'"):
        validate({"compression.heads": True, "depth.model": "unet",
                  "compression.calibration": "frames/"})
    with pytest.raises(ConfigError, match="guarded on raw frames at configure"):
        validate({"compression.heads": True, "compression.mode": "int8",
                  "depth.model": "unet", "compression.calibration": "live"})
    with pytest.raises(ConfigError, match="quantises detection.model 'onnx' only"):
        validate({"compression.heads": True, "compression.mode": "int8",
                  "detection.model": "ssdlite320_mobilenet_v3_large",
                  "compression.calibration": "frames/"})


# -- calibration from a ROS 2 bag ----------------------------------------------------------
def _write_bag(path: Path, images: List[np.ndarray], topics=("/cam/color/image_raw",)) -> None:
    """Colour topics plus a constant 16UC1 depth topic (which calibration must skip)."""
    messages = []
    for i, rgb in enumerate(images):
        stamp = 1_000_000_000 + i * 100_000_000
        messages += [(topic, stamp, rgb, "rgb8") for topic in topics]
        messages.append(("/cam/depth/image_raw", stamp,
                         np.full(rgb.shape[:2], 1799, np.uint16), "16UC1"))
    write_image_bag(path, messages)


def test_calibration_frames_from_a_ros2_bag(tmp_path: Path) -> None:
    images = [np.ascontiguousarray(f[::8, ::8]) for f in _vtest(12)[:6]]
    bag = tmp_path / "run"
    _write_bag(bag, images)
    frames = load_calibration_frames(str(bag), 3, (32, 32))
    expected = normalise_frames([images[0], images[2], images[5]], (32, 32))
    assert torch.allclose(frames, expected)
    db3 = next(bag.glob("*.db3"))
    assert torch.allclose(load_calibration_frames(str(db3), 3, (32, 32)), expected)
    named = load_calibration_frames(f"{bag}#/cam/color/image_raw", 6, (32, 32))
    assert named.shape == (6, 3, 32, 32)
    with pytest.raises(ConfigError, match="has no topic '/nope'"):
        load_calibration_frames(f"{bag}#/nope", 3, (32, 32))
    two = tmp_path / "two"
    _write_bag(two, images[:2], topics=("/a/image", "/b/image"))
    with pytest.raises(ConfigError, match=r"several image topics \(/a/image, /b/image\): "
                                          r"name one as .*#TOPIC"):
        load_calibration_frames(str(two), 3, (32, 32))


def test_calibration_bad_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown calibration keyword 'lve' \\(known: live\\)"):
        load_calibration_frames("lve", 4, (32, 32))
    with pytest.raises(ConfigError, match="calibration bag .*missing.mcap does not exist"):
        load_calibration_frames(str(tmp_path / "missing.mcap"), 4, (32, 32))
    with pytest.raises(ConfigError, match="'live' has no frames to read"):
        load_calibration_frames("live", 4, (32, 32))
    with pytest.raises(ConfigError, match="at least 2 frames"):
        LiveCompression(1, lambda frames: frames)


# -- live calibration ------------------------------------------------------------------------
def test_live_compression_collects_compresses_in_the_background_and_swaps() -> None:
    cfg = validate(dict(SMALL, backend="onnxruntime", **{
        "compression.mode": "int8", "compression.calibration": "live",
        "compression.calibration_frames": 8, "compression.calibrate_method": "minmax"}))
    pipeline = EncoderPipeline.from_config(cfg)
    live = pipeline.live
    assert live.status() == "collecting 0/8" and not isinstance(pipeline.encoder, OrtEncoder)
    pipeline.warmup()
    assert live.status() == "collecting 0/8", "warm-up frames must not be collected"
    frames = _vtest(12)
    fp32 = [pipeline.process(_frame(f, i + 1)).pooled for i, f in enumerate(frames[:3])]
    assert live.status() == "collecting 3/8"
    for i, f in enumerate(frames[3:8]):
        pipeline.process(_frame(f, i + 4))
    assert live.state == "compressing"
    assert live.wait(120), "background compression did not finish"
    assert live.state == "compressing"  # done, waiting for the next frame to swap
    result = pipeline.process(_frame(frames[0], 20))
    assert live.state == ACTIVE and isinstance(pipeline.encoder, OrtEncoder)
    status = compression_status(pipeline)
    assert status["compression_state"] == "active"
    assert 0.95 <= float(status["compression_fidelity"]) <= 1.0
    cosine = float(np.dot(result.pooled, fp32[0]) /
                   (np.linalg.norm(result.pooled) * np.linalg.norm(fp32[0])))
    assert cosine > 0.95


def test_live_compression_that_fails_its_guard_reports_and_refuses_frames() -> None:
    cfg = validate(dict(SMALL, **{
        "compression.mode": "int8", "compression.calibration": "live",
        "compression.calibration_frames": 4, "compression.min_fidelity": 1.0,
        "compression.fidelity_metric": "centred_cosine"}))
    pipeline = EncoderPipeline.from_config(cfg)
    for i, f in enumerate(_vtest(12)[:4]):
        pipeline.process(_frame(f, i + 1))
    assert pipeline.live.wait(120)
    assert pipeline.live.state == FAILED
    status = compression_status(pipeline)["compression_state"]
    assert status.startswith("failed: compressed model fidelity centred_cosine = ")
    assert "below compression.min_fidelity = 1.0000" in status
    with pytest.raises(ModelError, match="compressed encoder failed its guard: compressed "
                                         "model fidelity centred_cosine"):
        pipeline.process(_frame(_vtest(12)[5], 9))


# -- heads -------------------------------------------------------------------------------------
def test_box_agreement_counts_matches_both_ways() -> None:
    ref = Detections(np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], np.float32),
                     np.array([0.9, 0.8, 0.1], np.float32), np.array([1, 1, 1]))
    cand = Detections(np.array([[1, 1, 10, 10], [70, 70, 80, 80]], np.float32),
                      np.array([0.9, 0.7], np.float32), np.array([1, 1]))
    figures = box_agreement([ref], [cand], score_threshold=0.3)
    assert figures["recall"] == pytest.approx(0.5) and figures["precision"] == pytest.approx(0.5)
    assert figures["box_f1"] == pytest.approx(0.5) and figures["reference_boxes"] == 2
    assert box_agreement([Detections.empty()], [Detections.empty()], 0.3)["box_f1"] == 1.0
    with pytest.raises(ConfigError, match="same frames"):
        box_agreement([ref], [], 0.3)


def test_int8_heads_are_guarded_and_their_figures_reach_diagnostics() -> None:
    video = str(asset_path("vtest.avi"))
    cfg = validate(dict(SMALL, backend="onnxruntime", **{
        "compression.mode": "int8", "compression.calibration": video,
        "compression.calibration_frames": 4, "compression.heads": True,
        "compression.min_box_agreement": 0.8, "depth.model": "unet",
        "depth.input_size": [64, 64], "detection.model": "onnx",
        "detection.weights": str(asset_path("ssdlite_person.onnx"))}))
    pipeline = PerceptionPipeline.from_config(cfg)
    heads = pipeline.head_compression
    assert 0.0 <= heads["depth"]["absrel"] <= 0.05
    assert 0.8 <= heads["detection"]["box_f1"] <= 1.0 and heads["detection"]["reference_boxes"]
    assert pipeline.detection.detector.compression == "int8_ort_static"
    status = compression_status(pipeline)
    assert float(status["compression_depth_absrel"]) == pytest.approx(heads["depth"]["absrel"],
                                                                      abs=1e-4)
    assert float(status["compression_box_agreement"]) == pytest.approx(
        heads["detection"]["box_f1"], abs=1e-4)
    rgb = _vtest(12)[7]
    table = pipeline.detection.run(_frame(rgb, 1))
    assert table is not None
    depth = pipeline.depth.run(_frame(rgb, 1))
    assert depth.depth_m.shape == rgb.shape[:2]

    # A floor no INT8 model can meet: configure fails naming the head and the figure.
    with pytest.raises(ConfigError, match=r"compressed depth head: AbsRel = \d\.\d{4} against "
                                          r"the fp32 network on 4 frames exceeds "
                                          r"compression.max_depth_absrel = 0.0000"):
        PerceptionPipeline.from_config(cfg.replace(**{"compression.max_depth_absrel": 0.0,
                                                      "detection.model": "none"}))
    detector = create_model("onnx", kind="detector", path=str(asset_path("ssdlite_person.onnx")),
                            intra_op_num_threads=1)
    with pytest.raises(ConfigError, match=r"compressed detection head: box agreement F1 = "
                                          r"\d\.\d{4} .* below compression.min_box_agreement "
                                          r"= 1.0100"):
        compress_detector(detector, _vtest(12)[:2], 1.01, "minmax", threads=1)


# -- the node, cross-process: live calibration over real Fast DDS ------------------------------
NODE_REMAPS = {"camera/color/image_raw": "/livecal/rgb",
               "camera/depth/image_raw": "/livecal/depth",
               "camera/color/camera_info": "/livecal/info"}
NODE_PARAMS = {"backbone": "realtime", "output_dim": 32, "input_size": [64, 64],
               "compression.mode": "int8", "compression.calibration": "live",
               "compression.calibration_frames": 8, "diagnostics.period_s": 0.2,
               "sync.use_depth": False}


@pytest.fixture(scope="module")
def ros():
    import rclpy

    rclpy.init()
    yield
    rclpy.shutdown()


def _node_probe(name: str):
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import Float32MultiArray

    from ros_probe import Probe

    probe = Probe(name)
    probe.listen(Float32MultiArray, "/vision/features")
    probe.listen(DiagnosticArray, "/diagnostics")
    return probe


def _vision_status(probe):
    for msg in reversed(probe.received["/diagnostics"]):
        for status in msg.status:
            if status.name.startswith("vision"):
                level = status.level
                level = level if isinstance(level, int) else int.from_bytes(level, "little")
                return level, status.message, {kv.key: kv.value for kv in status.values}
    return None, "", {}


def _wait_until_collecting(probe, node) -> None:
    """The node is up and discovered: its diagnostics say it is collecting."""
    assert probe.spin_until(lambda: _vision_status(probe)[2].get(
        "compression_state", "").startswith("collecting"), 120), node.log()


@contextlib.contextmanager
def _camera(node=None, probe=None) -> Iterator[None]:
    """sim_camera at 15 Hz, 160x120; with ``node``, started once the node is discovered."""
    from ros_probe import running

    if node is not None:
        _wait_until_collecting(probe, node)
    with running("sim_camera", params={"rate_hz": 15.0, "width": 160, "height": 120},
                 remaps=NODE_REMAPS):
        yield


def test_node_live_calibration_publishes_from_the_start_then_swaps_in_int8(ros) -> None:
    from ros_probe import running

    probe = _node_probe("livecal_probe")
    features = probe.received["/vision/features"]

    def states() -> List[str]:
        """Every compression_state seen on /diagnostics, repeats collapsed."""
        seen: List[str] = []
        for msg in probe.received["/diagnostics"]:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                value = values.get("compression_state", "")
                if status.name.startswith("vision") and value and value not in seen[-1:]:
                    seen.append(value)
        return seen

    params = dict(NODE_PARAMS, backend="onnxruntime", **{"compression.calibrate_method":
                                                         "minmax"})
    try:
        with running("vision_node", params=params, remaps=NODE_REMAPS) as node:
            _wait_until_collecting(probe, node)
            with _camera():
                assert probe.spin_until(lambda: len(features) >= 3, 120), node.log()
                assert probe.spin_until(lambda: states()[-1:] == ["active"], 120), \
                    (states(), node.log())
                assert states()[0] == "collecting 0/8", states()
                _, _, values = _vision_status(probe)
                assert 0.95 <= float(values["compression_fidelity"]) <= 1.0
                assert values["compression_fidelity_metric"] == "cosine"
                probe.clear()
                assert probe.spin_until(lambda: len(features) >= 3, 30), node.log()
                assert len(features[-1].data) == 32
                assert "compressed encoder swapped in" in node.log()
                assert node.poll() is None
    finally:
        probe.destroy_node()


def test_node_live_calibration_below_the_floor_deactivates_itself(ros) -> None:
    from diagnostic_msgs.msg import DiagnosticStatus

    from ros_probe import running, wait_for_log

    probe = _node_probe("livecal_fail_probe")
    features = probe.received["/vision/features"]
    # A quantised model never reproduces the centred features exactly: 1.0 always fails.
    params = dict(NODE_PARAMS, **{"compression.min_fidelity": 1.0,
                                  "compression.fidelity_metric": "centred_cosine"})
    try:
        with running("vision_node", params=params, remaps=NODE_REMAPS) as node, \
                _camera(node, probe):
            assert probe.spin_until(lambda: len(features) >= 2, 120), node.log()
            assert probe.spin_until(
                lambda: _vision_status(probe)[1].startswith("compression failed"), 120), \
                node.log()
            level, message, values = _vision_status(probe)
            error = DiagnosticStatus.ERROR
            assert level == (error if isinstance(error, int) else int.from_bytes(error, "little"))
            assert "fidelity centred_cosine = " in message
            assert "min_fidelity = 1.0000" in message
            assert values["compression_state"].startswith("failed: ")
            assert wait_for_log(node, "compressed encoder failed its guard, deactivating", 10)
            probe.spin_for(0.5)
            probe.clear()
            probe.spin_for(1.5)
            assert len(features) == 0, "a node whose compression failed must not publish"
            assert node.poll() is None, "the node must not crash"
    finally:
        probe.destroy_node()


def test_structured_pruned_vit_exports_to_onnxruntime_and_matches_torch() -> None:
    # Pruning narrows the heads; the ONNX graph must keep the original attention scale.
    import onnxruntime as ort

    from robot_vision_ros.compression.prune import prune_structured
    from robot_vision_ros.core.backends import export_encoder_onnx

    torch.manual_seed(0)
    model = create_model("vit_tiny", output_dim=0).eval()
    pruned = prune_structured(model, 0.5, torch.randn(1, 3, 224, 224))
    onnx_bytes, _, _ = export_encoder_onnx(pruned, (224, 224))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    image = torch.randn(1, 3, 224, 224)
    pooled = session.run(["pooled"], {"image": image.numpy()})[0]
    with torch.no_grad():
        expected = pruned(image).numpy()
    assert pooled.shape == expected.shape == (1, 192)
    assert np.allclose(pooled, expected, atol=1e-4, rtol=1e-3)
