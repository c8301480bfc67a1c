"""Depth and detection on their own thread: cadence, mailbox, worker, and the node.

Unit tier on real models (a small encoder, the sensor/unet depth heads, the
real SSDLite person detector on vtest.avi frames), then a cross-process test
where a slow depth network runs beside a fast encoder over real Fast DDS.
"""
import threading
import time

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray

from robot_vision_ros.core import config
from robot_vision_ros.core.errors import ConfigError, InputError
from robot_vision_ros.core.frames import RgbdFrame
from robot_vision_ros.core.head_budget import HeadCadence
from robot_vision_ros.core.head_worker import HeadsWorker, LatestSlot
from robot_vision_ros.core.perception import HeadsResult, PerceptionPipeline
from robot_vision_ros.core.sim_scene import SimScene
from robot_vision_ros.core.stats import FrameStats
from robot_vision_ros.ros.conversions import stamp_to_ns

from conftest import asset_path
from ros_probe import Probe, running, wait_for_log

SMALL = {"backbone": "realtime", "output_dim": 16, "input_size": [64, 64]}


def _sim_frame(index: int, scene: SimScene) -> RgbdFrame:
    sim = scene.render(index)
    return RgbdFrame(rgb=sim.rgb, stamp_ns=1_000_000_000 + index * 33_000_000,
                     frame_id="cam", depth_m=sim.depth_m, intrinsics=scene.intrinsics)


# -- cadence ------------------------------------------------------------------------
def test_cadence_counts_processed_frames_not_calls():
    cadence = HeadCadence({"depth": 3, "detection": 1})
    ran = []
    for index in (1, 2, 3, 4, 7, 8, 9, 10):  # the heads thread missed frames 5 and 6
        cadence.start_frame(index)
        if cadence.should_run("depth"):
            cadence.ran("depth", 0.01)
            ran.append(index)
        cadence.end_frame()
    assert ran == [1, 4, 7, 10]


def test_cadence_restarts_when_the_index_goes_back_and_on_reset():
    cadence = HeadCadence({"depth": 5})
    cadence.start_frame(10)
    cadence.ran("depth", 0.0)
    cadence.start_frame(12)
    assert not cadence.due("depth")
    cadence.start_frame(2)  # a new stream counts from the start again
    assert cadence.due("depth")
    cadence.start_frame(11)
    cadence.ran("depth", 0.0)
    cadence.reset()
    cadence.start_frame(12)
    assert cadence.due("depth")


def test_cadence_rejects_bad_rates():
    with pytest.raises(ConfigError, match="every_n must be >= 1"):
        HeadCadence({"depth": 0})
    with pytest.raises(ConfigError, match="unknown head 'pose'"):
        HeadCadence({"pose": 2})


# -- mailbox ------------------------------------------------------------------------
def test_latest_slot_keeps_only_the_newest_item():
    slot = LatestSlot()
    frame = _sim_frame(0, SimScene(64, 48, 1, seed=0))
    assert slot.put((frame, 1)) is False
    assert slot.put((frame, 2)) is True  # 1 was never taken: replaced
    assert slot.take(0.1)[1] == 2
    t0 = time.monotonic()
    assert slot.take(0.05) is None and time.monotonic() - t0 >= 0.04
    slot.put((frame, 3))
    slot.close()
    assert slot.take(1.0) is None  # closing drops what was waiting and wakes takers


# -- the pipeline's two halves --------------------------------------------------------
def test_features_and_heads_halves_match_the_inline_pipeline():
    cfg = config.validate(dict(SMALL, **{"depth.model": "sensor", "depth.every_n": 2}))
    scene = SimScene(96, 64, 2, seed=3)
    inline = PerceptionPipeline.from_config(cfg)
    split = PerceptionPipeline.from_config(cfg)
    split.encoder.encoder.load_state_dict(inline.encoder.encoder.state_dict())
    for index in range(1, 5):
        frame = _sim_frame(index, scene)
        whole = inline.process(frame)
        features = split.process_features(frame)
        heads = split.process_heads(frame, index)
        np.testing.assert_allclose(features.features.pooled, whole.features.pooled, atol=1e-5)
        assert features.depth is None and features.objects is None
        assert heads.depth_reused == whole.depth_reused == (index % 2 == 0)
        np.testing.assert_array_equal(heads.depth.depth_m, whole.depth.depth_m)
    assert split.has_heads and not PerceptionPipeline.from_config(
        config.validate(dict(SMALL, **{"depth.model": "none", "detection.model": "none"}))
    ).has_heads


def test_reset_from_another_thread_is_applied_before_the_next_frame():
    cfg = config.validate(dict(SMALL, **{"depth.model": "sensor", "depth.every_n": 10}))
    pipeline = PerceptionPipeline.from_config(cfg)
    scene = SimScene(96, 64, 2, seed=3)
    assert pipeline.process_heads(_sim_frame(1, scene), 1).events == {"depth_runs": 1}
    assert pipeline.process_heads(_sim_frame(2, scene), 2).depth_reused
    reset = threading.Thread(target=pipeline.reset)
    reset.start()
    reset.join()
    # The reset forgot the cadence and the re-usable depth: depth runs again at once.
    assert pipeline.process_heads(_sim_frame(3, scene), 3).events == {"depth_runs": 1}


# -- the worker -------------------------------------------------------------------------
def _vtest_frames(count: int):
    import cv2
    capture = cv2.VideoCapture(str(asset_path("vtest.avi")))
    frames = []
    for i in range(count):
        ok, bgr = capture.read()
        assert ok
        frames.append(RgbdFrame(rgb=np.ascontiguousarray(bgr[:, :, ::-1]),
                                stamp_ns=(i + 1) * 100_000_000, frame_id="street"))
    capture.release()
    return frames


def test_worker_runs_the_real_detector_on_the_newest_frame_only():
    model = str(asset_path("ssdlite_person.onnx"))
    cfg = config.validate(dict(SMALL, **{"detection.model": "onnx", "detection.weights": model,
                                         "tracking.min_hits": 1}))
    pipeline = PerceptionPipeline.from_config(cfg)
    stats = FrameStats()
    published, warnings = [], []
    gate, entered = threading.Event(), threading.Event()

    def publish(result: HeadsResult, frame: RgbdFrame) -> None:
        entered.set()
        gate.wait(10)  # hold the thread busy so later offers pile up
        published.append((frame.stamp_ns, result))

    worker = HeadsWorker(pipeline.process_heads, publish, stats, warnings.append,
                         clock_ns=time.time_ns, threads=1)
    frames = _vtest_frames(5)
    worker.start()
    try:
        worker.offer(frames[0], 1)
        assert entered.wait(30)
        deadline = time.monotonic() + 30
        while stats.snapshot().get("heads_superseded", 0) < 3 and time.monotonic() < deadline:
            for i in (2, 3, 4, 5):
                worker.offer(frames[i - 1], i)
            time.sleep(0.05)
        gate.set()
        deadline = time.monotonic() + 30
        while len(published) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
    stamps = [stamp for stamp, _ in published]
    assert stamps[0] == frames[0].stamp_ns and stamps[-1] == frames[4].stamp_ns
    assert len(stamps) == 2  # frames 2-4 were superseded, never queued
    snap = stats.snapshot()
    assert snap["heads_superseded"] >= 3 and snap["heads_processed"] == 2
    assert snap["heads_ms_p50"] > 0 and snap["heads_age_ms_p50"] > 0
    last = published[-1][1]
    assert last.objects is not None and len(last.objects) >= 2  # pedestrians in vtest
    assert last.events.get("detection_runs") == 1
    assert not warnings


def test_worker_counts_bad_frames_and_keeps_going():
    cfg = config.validate(dict(SMALL, **{"depth.model": "sensor"}))
    pipeline = PerceptionPipeline.from_config(cfg)
    stats, warnings, published = FrameStats(), [], []
    scene = SimScene(96, 64, 2, seed=1)

    def run(frame: RgbdFrame, index: int) -> HeadsResult:
        if index == 1:
            raise InputError("camera intrinsics are singular", reason="bad_intrinsics")
        return pipeline.process_heads(frame, index)

    worker = HeadsWorker(run, lambda r, f: published.append(r), stats, warnings.append,
                         clock_ns=time.time_ns)
    assert worker.step(_sim_frame(1, scene), 1) is None
    assert worker.step(_sim_frame(2, scene), 2) is not None
    snap = stats.snapshot()
    assert snap["heads_bad_intrinsics"] == 1 and snap["heads_processed"] == 1
    assert "singular" in warnings[0] and len(published) == 1
    with pytest.raises(ValueError, match="threads must be >= 0"):
        HeadsWorker(run, print, stats, print, time.time_ns, threads=-1)


def test_heads_thread_runs_at_a_lower_priority_than_the_rest():
    import os
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker = HeadsWorker(lambda f, i: HeadsResult(), lambda r, f: None, FrameStats(), print,
                         clock_ns=time.time_ns, nice=min(19, own + 7))
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while worker.niceness is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert worker.niceness == min(19, own + 7)
    # Only the heads thread: the caller (the encoder's side) keeps its priority.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
    with pytest.raises(ValueError, match="nice must be in 0..19"):
        HeadsWorker(lambda f, i: HeadsResult(), print, FrameStats(), print, time.time_ns,
                    nice=25)


def test_heads_thread_parameters_are_validated():
    with pytest.raises(ConfigError, match="heads.threads"):
        config.validate({"heads.threads": -1})
    with pytest.raises(ConfigError, match="heads.thread"):
        config.validate({"heads.thread": "yes"})
    with pytest.raises(ConfigError, match="heads.nice"):
        config.validate({"heads.nice": 20})
    cfg = config.validate({"detection.model": "onnx", "detection.weights": "x.onnx",
                           "heads.threads": 2})
    assert cfg.detector_options()["intra_op_num_threads"] == 2
    inline = config.validate({"detection.model": "onnx", "detection.weights": "x.onnx",
                              "heads.thread": False})
    assert "intra_op_num_threads" not in inline.detector_options()


# -- across processes -------------------------------------------------------------------
@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


REMAPS = {"camera/color/image_raw": "/ht/rgb", "camera/depth/image_raw": "/ht/depth",
          "camera/color/camera_info": "/ht/info"}


def test_slow_depth_network_does_not_hold_up_the_features(ros):
    probe = Probe("heads_thread_probe")
    probe.listen(Float32MultiArray, "/vision/features")
    probe.listen(Image, "/vision/depth")
    probe.listen(DiagnosticArray, "/diagnostics")
    # A random-weight unet at 240x320 costs far more than a frame period on this CPU;
    # the 64x64 encoder costs a few milliseconds.
    params = dict(SMALL, **{"depth.model": "unet", "depth.input_size": [240, 320],
                            "depth.every_n": 1, "depth.reuse": False, "heads.thread": True})
    with running("sim_camera", params={"rate_hz": 20.0, "num_objects": 3, "seed": 2},
                 remaps=REMAPS), running("vision_node", params=params, remaps=REMAPS) as node:
        assert probe.spin_until(lambda: len(probe.received["/vision/depth"]) >= 3, 180), \
            node.log()
        probe.clear()
        probe.spin_for(4.0)
        probe.spin_until(lambda: "heads_superseded" in probe.diagnostics(), 5)
        diag = probe.diagnostics()
    features = len(probe.received["/vision/features"])
    depths = probe.received["/vision/depth"]
    assert depths, node.log()
    # Every frame's features went out; depth only for the frames the heads thread took.
    assert features >= 2 * len(depths), (features, len(depths))
    assert diag["heads"] == "own thread"
    assert float(diag["heads_superseded"]) > 0 and float(diag["depth_runs"]) > 0
    assert float(diag["heads_ms_p50"]) > float(diag["processing_ms_p50"])
    probe.destroy_node()


def test_inline_heads_still_publish_depth(ros):
    probe = Probe("heads_inline_probe")
    probe.listen(Image, "/vision/depth")
    probe.listen(DiagnosticArray, "/diagnostics")
    params = dict(SMALL, **{"depth.model": "sensor", "heads.thread": False,
                            "depth.max_m": 20.0})
    with running("sim_camera", params={"rate_hz": 15.0, "num_objects": 2, "seed": 5},
                 remaps=REMAPS), running("vision_node", params=params, remaps=REMAPS) as node:
        assert probe.spin_until(lambda: len(probe.received["/vision/depth"]) >= 5, 120), \
            node.log()
        assert probe.spin_until(lambda: "depth_runs" in probe.diagnostics(), 5)
        diag = probe.diagnostics()
    assert diag["heads"] == "inline" and "heads_processed" not in diag
    assert all(stamp_to_ns(m.header.stamp) > 0 for m in probe.received["/vision/depth"])
    probe.destroy_node()


def test_depth_nobody_uses_is_not_subscribed(ros):
    probe = Probe("no_depth_probe")
    probe.listen(Float32MultiArray, "/vision/features")
    probe.listen(DiagnosticArray, "/diagnostics")
    params = dict(SMALL, **{"depth.model": "none", "detection.model": "none"})
    with running("sim_camera", params={"rate_hz": 15.0, "num_objects": 2, "seed": 6},
                 remaps=REMAPS), running("vision_node", params=params, remaps=REMAPS) as node:
        assert probe.spin_until(lambda: len(probe.received["/vision/features"]) >= 5, 120), \
            node.log()
        assert probe.spin_until(lambda: float(probe.diagnostics().get("processed", 0)) >= 5, 10)
        diag = probe.diagnostics()
        assert wait_for_log(node, "camera/depth/image_raw not subscribed", 5), node.log()
    assert "depth_received" not in diag and "sync_no_depth" not in diag
