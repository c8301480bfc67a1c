"""The tabletop detector (objects on a support plane, from depth) and sensor hole filling.

Real renderings: the procedural sim scene (with its intrinsics and exact ground
truth), a small pybullet table-top frame, and cross-process sim_camera ->
vision_node over real Fast DDS.
"""
import logging
import math

import numpy as np
import pytest
import torch

from robot_vision_ros.core.config import validate
from robot_vision_ros.core.depth_fusion import fill_nearest, nearest_fill
from robot_vision_ros.core.errors import ConfigError, InputError
from robot_vision_ros.core.frames import CameraIntrinsics, RgbdFrame
from robot_vision_ros.core.ground_truth import box_precision, box_recall, remove_blobs
from robot_vision_ros.core.heads import DepthHead, DetectionHead
from robot_vision_ros.core.sim_scene import SimScene
from robot_vision_ros.models.detection.tabletop import TabletopDetector
from robot_vision_ros.models.registry import create_model, list_models
from robot_vision_ros.tracking import TrackerConfig

W, H = 320, 240
CPU = torch.device("cpu")


def _holed(depth_m: np.ndarray, fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    out = depth_m.copy()
    out[remove_blobs(np.isfinite(depth_m), fraction, seed=seed)] = np.nan
    return out


@pytest.fixture(scope="module")
def detector():
    return create_model("tabletop", kind="detector")


# ---------------------------------------------------------------- detector

def test_registered_and_accepted_by_the_config():
    assert "tabletop" in list_models("detector")
    cfg = validate({"detection.model": "tabletop", "depth.fill_holes": "nearest"})
    assert cfg.detection_model == "tabletop" and cfg.depth_fill_holes == "nearest"
    assert create_model("tabletop", kind="detector").class_names == ["object"]


@pytest.mark.parametrize("holes", [0.0, 0.2])
def test_recall_on_the_sim_scene_against_its_ground_truth(detector, holes):
    recalls, precisions = [], []
    for seed in range(4):
        scene = SimScene(W, H, num_objects=5, seed=seed)
        for index in (0, 40, 95):
            frame = scene.render(index)
            truth = scene.ground_truth(frame)
            depth = _holed(frame.depth_m, holes, seed + index) if holes else frame.depth_m
            dets = detector.detect(frame.rgb, depth, scene.intrinsics)
            assert (dets.class_ids == 0).all() and ((dets.scores > 0) & (dets.scores <= 1)).all()
            recalls.append(box_recall(dets.boxes_xyxy, truth.boxes_xyxy, 0.5))
            precisions.append(box_precision(dets.boxes_xyxy, truth.boxes_xyxy, 0.5))
    assert np.mean(recalls) >= 0.8, recalls
    assert np.nanmean(precisions) >= 0.8, precisions
    # The sim's table has depth affine in the image row, which that model explains exactly.
    assert detector.last_surface.model == "depth_affine"
    assert detector.last_surface.inlier_fraction > 0.5


def test_works_without_intrinsics(detector):
    scene = SimScene(W, H, num_objects=5, seed=7)
    frame = scene.render(12)
    truth = scene.ground_truth(frame)
    with_k = detector.detect(frame.rgb, frame.depth_m, scene.intrinsics)
    without = detector.detect(frame.rgb, frame.depth_m)
    assert box_recall(without.boxes_xyxy, truth.boxes_xyxy) >= 0.8
    np.testing.assert_array_equal(with_k.boxes_xyxy, without.boxes_xyxy)


def _plane_scene(bump_m: float, size: int = 96):
    """A true 3-D table plane seen obliquely from 0.8 m, with a 12 cm square block
    ``bump_m`` tall in the middle (exact depth by ray casting)."""
    k = CameraIntrinsics(0.9 * size, 0.9 * size, (size - 1) / 2, (size - 1) / 2, size, size)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    rays = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones_like(u)], axis=-1)
    tilt = math.radians(50)
    normal = np.array([0.0, -math.cos(tilt), -math.sin(tilt)])  # points towards the camera
    distance = 0.8  # camera to plane: n . X = -distance on the table
    centre = rays[size // 2, size // 2] * (-distance / (rays[size // 2, size // 2] @ normal))
    depth = -distance / (rays @ normal)  # z of the table along each ray (ray z = 1)
    lift = -distance + bump_m  # the block's top: n . X = -(distance - bump)
    top = lift / (rays @ normal)
    points = rays * top[..., None]
    across = np.cross(normal, [1.0, 0.0, 0.0])
    offset = points - (centre + normal * bump_m)
    inside = (np.abs(offset[..., 0]) < 0.06) & (np.abs(offset @ across) < 0.06)
    depth = np.where(inside, top, depth).astype(np.float32)
    return depth, k, inside


def test_true_plane_gives_height_above_the_plane_in_metres(detector):
    depth, k, inside = _plane_scene(0.05)
    rgb = np.zeros(depth.shape + (3,), np.uint8)
    dets = detector.detect(rgb, depth, k)
    assert detector.last_surface.model == "plane"
    assert detector.last_surface.camera_distance_m(k) == pytest.approx(0.8, abs=1e-3)
    rows, cols = np.nonzero(inside)
    truth = np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], np.float32)
    assert len(dets) == 1 and box_recall(dets.boxes_xyxy, truth, 0.7) == 1.0
    # Score from the height: 5 cm over score_height_m 3 cm.
    assert dets.scores[0] == pytest.approx(1 - math.exp(-0.05 / 0.03), abs=0.02)
    # A 1 cm bump is below min_height_m (1.5 cm): table texture, not an object.
    flat, k, _ = _plane_scene(0.01)
    assert len(detector.detect(rgb, flat, k)) == 0


def test_flat_table_without_objects_gives_nothing(detector):
    scene = SimScene(W, H, num_objects=0, seed=3)
    frame = scene.render(0)
    assert len(detector.detect(frame.rgb, frame.depth_m, scene.intrinsics)) == 0
    assert len(detector.detect(frame.rgb, _holed(frame.depth_m), scene.intrinsics)) == 0


def test_pybullet_table_top(detector, tmp_path, monkeypatch):
    pytest.importorskip("pybullet", reason="pybullet renders the table-top scene")
    from robot_vision_ros.core.pybullet_scene import (TABLE_TOP_M, PybulletScene,
                                                      render_sequence)
    monkeypatch.setenv("ROBOT_VISION_CACHE", str(tmp_path))
    seq = render_sequence(1, 1, W, H)
    frame, truth = seq.frame(0), seq.ground_truth(0)
    dets = detector.detect(frame.rgb, frame.depth_m, frame.intrinsics)
    with PybulletScene(1, W, H) as scene:
        eye_height = scene.camera_eye(0)[2] - TABLE_TOP_M
    # A real plane: the fitted table is where pybullet put it, to a few millimetres.
    assert detector.last_surface.model == "plane"
    assert detector.last_surface.camera_distance_m(frame.intrinsics) == pytest.approx(
        eye_height, abs=0.01)
    # Small far objects and touching ones merged are missed; what it finds is real.
    assert box_recall(dets.boxes_xyxy, truth.boxes_xyxy) >= 0.5
    assert box_precision(dets.boxes_xyxy, truth.boxes_xyxy) >= 0.75


def test_without_depth_nothing_and_one_warning(caplog):
    detector = TabletopDetector()
    rgb = np.zeros((48, 64, 3), np.uint8)
    with caplog.at_level(logging.WARNING):
        assert len(detector.detect(rgb)) == 0
        assert len(detector.detect(rgb)) == 0
    warnings = [r for r in caplog.records if "no depth" in r.getMessage()]
    assert len(warnings) == 1 and "tabletop" in warnings[0].getMessage()


def test_unknown_depth_values_are_ignored(detector, caplog):
    scene = SimScene(W, H, num_objects=4, seed=2)
    frame = scene.render(5)
    holes = remove_blobs(np.isfinite(frame.depth_m), 0.2, seed=1)
    as_nan = np.where(holes, np.nan, frame.depth_m).astype(np.float32)
    mixed = frame.depth_m.copy()
    mixed[holes] = np.array([0.0, -1.0, np.inf, np.nan], np.float32)[
        np.arange(int(holes.sum())) % 4]
    expected = detector.detect(frame.rgb, as_nan, scene.intrinsics)
    got = detector.detect(frame.rgb, mixed, scene.intrinsics)
    assert len(expected) >= 3
    np.testing.assert_array_equal(got.boxes_xyxy, expected.boxes_xyxy)
    fresh = TabletopDetector()
    with caplog.at_level(logging.WARNING):
        empty = fresh.detect(frame.rgb, np.full(frame.depth_m.shape, np.nan, np.float32))
    assert len(empty) == 0 and "valid depth pixels" in caplog.text


def test_bad_inputs_and_options_are_clear_errors(detector):
    rgb = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(InputError, match="RGB resolution 48x64") as err:
        detector.detect(rgb, np.ones((48, 63), np.float32))
    assert err.value.reason == "bad_size"
    with pytest.raises(InputError, match="float metres") as err:
        detector.detect(rgb, np.ones((48, 64), np.uint16))
    assert err.value.reason == "bad_dtype"
    k = CameraIntrinsics(50.0, 50.0, 31.5, 23.5, 128, 96)
    with pytest.raises(InputError, match="scale them"):
        detector.detect(rgb, np.ones((48, 64), np.float32), k)
    with pytest.raises(ConfigError, match="surface must be one of"):
        TabletopDetector(surface="sphere")
    with pytest.raises(ConfigError, match="no weights"):
        create_model("tabletop", kind="detector", weights="model.pt")
    with pytest.raises(ConfigError, match="min_height_m"):
        TabletopDetector(min_height_m=-0.01)


def test_rgb_detectors_ignore_the_depth():
    det = create_model("yolo_head", kind="detector", num_classes=2, input_size=64,
                       backbone="resnet18", score_threshold=0.0)
    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    plain = det.detect(rgb)
    with_depth = det.detect(rgb, np.ones((48, 64), np.float32))
    np.testing.assert_array_equal(plain.boxes_xyxy, with_depth.boxes_xyxy)
    np.testing.assert_array_equal(plain.scores, with_depth.scores)


def test_detection_head_tracks_the_sim_objects_with_steady_ids():
    scene = SimScene(W, H, num_objects=4, seed=5)
    head = DetectionHead("tabletop", tracker_config=TrackerConfig(frame_rate_hz=30.0))
    tables = []
    for index in range(15):
        sim = scene.render(index)
        frame = RgbdFrame(rgb=sim.rgb, stamp_ns=int(index * 1e9 / 30), depth_m=sim.depth_m,
                          intrinsics=scene.intrinsics)
        tables.append(head.run(frame, sim.depth_m))
    last = tables[-1]
    truth = scene.ground_truth(sim)
    assert box_recall(last.tracks.boxes_xyxy, truth.boxes_xyxy) >= 0.75
    assert np.isfinite(last.xyz_m).all() and (last.xyz_m[:, 2] > 0.3).all()
    ids = [set(t.tracks.track_ids.tolist()) for t in tables[5:]]
    assert all(i == ids[0] for i in ids), ids  # the same objects keep their ids
    # Without depth the head still runs: nothing detected, no crash.
    empty = head.run(RgbdFrame(rgb=sim.rgb, stamp_ns=int(16 * 1e9 / 30)))
    assert not np.isfinite(empty.xyz_m).any()


# ---------------------------------------------------------------- hole filling

def test_fill_nearest_values():
    depth = np.full((5, 7), np.nan, np.float32)
    depth[0, 0], depth[4, 6], depth[2, 3] = 1.0, 3.0, 2.0
    filled = fill_nearest(depth)
    assert filled[0, 0] == 1.0 and filled[4, 6] == 3.0 and filled[2, 3] == 2.0  # exact
    assert filled[0, 1] == 1.0 and filled[2, 4] == 2.0 and filled[4, 5] == 3.0  # nearest
    assert np.isfinite(filled).all() and np.isnan(depth[0, 1])  # input untouched
    limited = fill_nearest(depth, max_distance_px=1.0)
    assert limited[2, 4] == 2.0 and limited[1, 3] == 2.0 and limited[1, 0] == 1.0
    # sqrt(2) and 2 px from the nearest value: beyond the limit.
    assert np.isnan(limited[1, 1]) and np.isnan(limited[0, 3]) and np.isnan(limited[2, 6])
    assert np.isnan(fill_nearest(np.full((4, 4), np.nan, np.float32))).all()
    np.testing.assert_array_equal(nearest_fill(depth), filled)
    with pytest.raises(ConfigError, match="max_distance_px"):
        fill_nearest(depth, max_distance_px=0)
    with pytest.raises(InputError, match="float"):
        fill_nearest(np.zeros((4, 4), np.uint16))


def test_sensor_depth_head_fills_holes_on_request():
    scene = SimScene(W, H, num_objects=4, seed=1)
    sim = scene.render(3)
    sensor = _holed(sim.depth_m, 0.2, 4)
    frame = RgbdFrame(rgb=sim.rgb, stamp_ns=0, depth_m=sensor)
    holes = np.isnan(sensor)
    plain = DepthHead("sensor", min_m=0.1, max_m=10.0).run(frame).depth_m
    assert np.isnan(plain[holes]).all()  # default: unchanged behaviour
    filled = DepthHead("sensor", min_m=0.1, max_m=10.0, fill_holes="nearest").run(frame)
    assert filled.source == "sensor" and np.isfinite(filled.depth_m).all()
    np.testing.assert_array_equal(filled.depth_m[~holes], sensor[~holes])
    # A guess, not a measurement: hole AbsRel 0.14 here (objects' edges move into holes).
    rel = np.abs(filled.depth_m[holes] - sim.depth_m[holes]) / sim.depth_m[holes]
    assert float(np.mean(rel)) < 0.2
    limited = DepthHead("sensor", fill_holes="nearest", fill_max_px=3).run(frame).depth_m
    assert np.isnan(limited).any() and np.isfinite(limited[~holes]).all()
    assert np.isfinite(limited).sum() > np.isfinite(plain).sum()
    with pytest.raises(ConfigError, match="fill_holes must be one of"):
        DepthHead("sensor", fill_holes="bilinear")
    with pytest.raises(ConfigError, match="fill_max_px"):
        DepthHead("sensor", fill_holes="nearest", fill_max_px=-1)


# ---------------------------------------------------------------- cross-process

def test_node_tracks_tabletop_objects_and_fills_depth_holes(tmp_path):
    import rclpy
    from sensor_msgs.msg import Image, PointCloud2

    from robot_vision_ros.core.image_codec import decode_depth
    from robot_vision_ros.ros.conversions import stamp_to_ns
    from robot_vision_ros.ros.outputs import pointcloud2_to_object_rows

    from ros_probe import Probe, running

    remaps = {"camera/color/image_raw": "/tt/rgb", "camera/depth/image_raw": "/tt/depth",
              "camera/color/camera_info": "/tt/info"}
    camera = {"rate_hz": 10.0, "width": W, "height": H, "num_objects": 4, "seed": 0,
              "depth_holes": 0.2, "cache_frames": 60, "publish_ground_truth": False}
    params = {"backbone": "realtime", "output_dim": 16, "input_size": [64, 64],
              "target_fps": 10.0, "depth.model": "sensor", "depth.fill_holes": "nearest",
              "detection.model": "tabletop", "tracking.min_hits": 2}
    rclpy.init()
    try:
        probe = Probe("tabletop_probe")
        probe.listen(PointCloud2, "/vision/detections")
        probe.listen(Image, "/vision/depth")
        probe.listen(Image, "/tt/depth")
        with running("sim_camera", params=camera, remaps=remaps), \
                running("vision_node", params=params, remaps=remaps) as node:
            assert probe.spin_until(
                lambda: len(probe.received["/vision/detections"]) >= 25, 120), node.log()
        received = dict(probe.received)
        probe.destroy_node()
    finally:
        rclpy.shutdown()

    def depth_of(msg):
        return decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian,
                            msg.data)

    rows = [pointcloud2_to_object_rows(m) for m in received["/vision/detections"][5:]]
    counts = [len(r) for r in rows]
    assert np.mean(counts) >= 2.5, counts  # most of the 4 boxes tracked on every frame
    ids = np.concatenate([r["track_id"] for r in rows])
    # Persistent ids: far fewer distinct ids than tracked boxes (the camera's 6 s loop
    # restarts once at most, giving the jumped objects new ids).
    assert len(set(ids.tolist())) <= 0.3 * len(ids), ids
    everything = np.concatenate(rows)
    assert np.isfinite(everything["z"]).mean() > 0.9  # depth and intrinsics located them
    sensor = {stamp_to_ns(m.header.stamp): m for m in received["/tt/depth"]}
    compared = 0
    for msg in received["/vision/depth"]:
        raw = sensor.get(stamp_to_ns(msg.header.stamp))
        if raw is None:
            continue
        sensor_m, published = depth_of(raw), depth_of(msg)
        holes = ~np.isfinite(sensor_m) | (sensor_m <= 0)
        assert holes.mean() > 0.1  # the camera has holes ...
        assert np.isfinite(published).all()  # ... the node filled every one
        np.testing.assert_allclose(published[~holes], sensor_m[~holes], atol=1e-6)
        compared += 1
    assert compared >= 3
