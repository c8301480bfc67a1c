"""Simulator ground truth: the dataclass, the scores, both scenes, and sim_camera's topics.

The last test runs the real ``sim_camera`` in its own process and reads its
ground truth over Fast DDS, as ``make demo`` and a benchmark would.
"""
import math

import numpy as np
import pytest
import rclpy
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Header

from robot_vision_ros.core.errors import ConfigError, InputError
from robot_vision_ros.core.frames import CameraIntrinsics
from robot_vision_ros.core.ground_truth import (GroundTruth, box_precision, box_recall,
                                                depth_error, ground_truth_from_labels,
                                                match_boxes, object_points_m, remove_blobs)
from robot_vision_ros.core.pybullet_scene import load_sequence, render_sequence
from robot_vision_ros.core.sim_scene import CLASS_NAMES, SimScene
from robot_vision_ros.ros.conversions import image_msg_to_depth_m, stamp_to_ns
from robot_vision_ros.ros.ground_truth_msgs import (GROUND_TRUTH_ROW_DTYPE,
                                                    ground_truth_to_pointcloud2,
                                                    pointcloud2_to_ground_truth_rows)
from robot_vision_ros.ros.sim_camera import sensor_depth_m

from ros_probe import Probe, running, wait_for_log


def _truth(**overrides):
    fields = dict(frame_index=3, boxes_xyxy=[[0, 0, 4, 4], [2, 1, 8, 6]], object_ids=[1, 2],
                  class_ids=[0, 5], depth_m=[1.0, 2.0],
                  depth_image_m=np.ones((6, 8), np.float32))
    fields.update(overrides)
    return GroundTruth(**fields)


# ---------------------------------------------------------------- the dataclass

def test_ground_truth_casts_and_keeps_its_columns():
    truth = _truth()
    assert len(truth) == 2 and truth.frame_index == 3
    assert truth.boxes_xyxy.dtype == np.float32 and truth.boxes_xyxy.shape == (2, 4)
    assert truth.object_ids.dtype == np.int64 and truth.class_ids.dtype == np.int64
    assert truth.depth_m.dtype == np.float32 and truth.depth_image_m.dtype == np.float32
    empty = _truth(boxes_xyxy=np.zeros((0, 4)), object_ids=[], class_ids=[], depth_m=[])
    assert len(empty) == 0


@pytest.mark.parametrize("overrides,match", [
    ({"boxes_xyxy": [[0, 0, 4]]}, r"boxes_xyxy must have shape \[N, 4\]"),
    ({"object_ids": [1]}, "lengths differ"),
    ({"depth_m": [[1.0, 2.0]]}, r"depth_m must be a 1-D \[N\] array"),
    ({"depth_image_m": np.ones(6, np.float32)}, r"depth_image_m must be a non-empty \[H, W\]"),
    ({"depth_image_m": np.ones((6, 8), np.uint16)}, "float array"),
    ({"boxes_xyxy": [[0, 0, 4, 4], [2, 1, 9, 6]]}, "inside the 8x6 image"),
    ({"boxes_xyxy": [[0, 0, 4, 4], [2, 1, 2, 6]]}, "non-empty"),
    ({"boxes_xyxy": [[0, 0, 4, 4], [2, np.nan, 3, 6]]}, "finite"),
    ({"object_ids": [0, 2]}, "object_ids must be >= 1"),
    ({"class_ids": [0, -1]}, "class_ids >= 0"),
    ({"object_ids": [2, 2]}, "object_ids must be unique"),
])
def test_ground_truth_rejects_bad_columns(overrides, match):
    with pytest.raises(InputError, match=match):
        _truth(**overrides)


def test_ground_truth_from_labels_boxes_visible_pixels_and_median_depth():
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 2:5] = 4
    labels[4, 6] = 9
    depth = np.full((6, 8), 3.0, np.float32)
    depth[1:3, 2:5] = [[1.0, 1.0, 2.0], [1.0, np.nan, 5.0]]
    truth = ground_truth_from_labels(7, labels, depth, {4: 2, 9: 0, 11: 1})
    assert truth.frame_index == 7
    assert truth.object_ids.tolist() == [4, 9] and truth.class_ids.tolist() == [2, 0]
    assert truth.boxes_xyxy.tolist() == [[2, 1, 5, 3], [6, 4, 7, 5]]
    assert truth.depth_m.tolist() == [1.0, 3.0]  # median of 1, 1, 2, 1, 5 (NaN left out)
    assert len(ground_truth_from_labels(0, labels, depth, {4: 2, 9: 0}, min_pixels=2)) == 1
    with pytest.raises(InputError, match=r"object ids \[9\] with no class"):
        ground_truth_from_labels(0, labels, depth, {4: 2})
    with pytest.raises(InputError, match="differ in shape"):
        ground_truth_from_labels(0, labels, depth[:5], {4: 2, 9: 0})


def test_object_points_back_project_the_box_centre():
    k = CameraIntrinsics(100.0, 50.0, 3.5, 2.5, 8, 6)
    truth = _truth(depth_m=[2.0, np.nan])
    xyz = object_points_m(truth, k)
    # Box [0, 0, 4, 4]: centre pixel (1.5, 1.5) in the intrinsics' pixel-centre convention.
    assert np.allclose(xyz[0], [(1.5 - 3.5) * 2 / 100, (1.5 - 2.5) * 2 / 50, 2.0])
    assert np.isnan(xyz[1]).all()


# ---------------------------------------------------------------- scores

def test_depth_error_values_on_a_known_offset():
    truth = np.full((4, 5), 2.0, np.float32)
    scores = depth_error(truth * 1.1, truth)
    assert scores["abs_rel"] == pytest.approx(0.1, rel=1e-5)
    assert scores["rmse_m"] == pytest.approx(0.2, rel=1e-5)
    assert scores["delta1"] == 1.0 and scores["valid_fraction"] == 1.0
    assert scores["n_pixels"] == 20 and scores["n_missing"] == 0
    assert depth_error(truth, truth)["abs_rel"] == 0.0


def test_depth_error_excludes_and_counts_nan_zero_and_inf():
    truth = np.full((2, 4), 1.0, np.float32)
    truth[0, 0], truth[0, 1] = np.nan, 0.0
    estimate = np.full((2, 4), 1.5, np.float32)
    estimate[1, 0], estimate[1, 1], estimate[1, 2] = np.inf, 0.0, np.nan
    scores = depth_error(estimate, truth)
    assert scores["n_truth_invalid"] == 2 and scores["n_missing"] == 3
    assert scores["n_pixels"] == 3 and scores["valid_fraction"] == pytest.approx(3 / 8)
    assert scores["abs_rel"] == pytest.approx(0.5) and scores["delta1"] == 0.0
    holes = np.zeros((2, 4), bool)
    holes[1] = True
    on_holes = depth_error(estimate, truth, holes)
    assert on_holes["n_pixels"] == 1 and on_holes["n_missing"] == 3
    nothing = depth_error(np.full((2, 4), np.nan, np.float32), truth)
    assert math.isnan(nothing["abs_rel"]) and nothing["valid_fraction"] == 0.0


def test_depth_error_rejects_mismatched_sizes():
    with pytest.raises(InputError, match=r"\(4, 5\) and gt_m \(4, 6\) differ in shape"):
        depth_error(np.ones((4, 5), np.float32), np.ones((4, 6), np.float32))


def test_box_recall_and_precision():
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    assert box_recall(truth, truth) == 1.0 and box_precision(truth, truth) == 1.0
    shifted = truth + np.array([4, 0, 4, 0], np.float32)  # IoU 6/14 < 0.5
    assert box_recall(shifted, truth) == 0.0
    assert box_recall(shifted, truth, iou=0.4) == 1.0
    # Two detections on one object count once (one-to-one matching).
    doubled = np.array([[0, 0, 10, 10], [1, 0, 10, 10]], np.float32)
    assert match_boxes(doubled, truth) == 1 and box_precision(doubled, truth) == 0.5
    none = np.zeros((0, 4), np.float32)
    assert box_recall(none, truth) == 0.0 and math.isnan(box_precision(none, truth))
    assert math.isnan(box_recall(truth, none)) and box_precision(truth, none) == 0.0
    assert match_boxes([], []) == 0


def test_box_scores_reject_bad_input():
    with pytest.raises(InputError, match=r"truth_boxes_xyxy must have shape \[N, 4\]"):
        box_recall(np.zeros((1, 4)), np.zeros((1, 3)))
    with pytest.raises(ConfigError, match="iou must be in"):
        match_boxes(np.zeros((1, 4)), np.zeros((1, 4)), iou=0.0)


def test_remove_blobs_covers_the_fraction_of_valid_pixels_only():
    valid = np.ones((48, 64), bool)
    valid[:, :10] = False
    ours = remove_blobs(valid, 0.2, seed=5)
    assert np.array_equal(ours, remove_blobs(valid, 0.2, seed=5))
    assert not ours[:, :10].any() and 0.2 <= ours.sum() / valid.sum() < 0.4
    with pytest.raises(ConfigError, match="fraction must be in"):
        remove_blobs(valid, 1.0)


# ---------------------------------------------------------------- the two scenes

def _check_scene_truth(truth, depth_image, labels, width, height):
    boxes = truth.boxes_xyxy
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 3] <= height).all()
    assert np.array_equal(truth.depth_image_m, depth_image, equal_nan=True)
    for box, object_id, depth in zip(boxes.astype(int), truth.object_ids, truth.depth_m):
        x1, y1, x2, y2 = box
        mine = labels[y1:y2, x1:x2] == object_id
        # The box is tight: the object touches all four sides.
        assert mine[0].any() and mine[-1].any() and mine[:, 0].any() and mine[:, -1].any()
        assert (labels == object_id).sum() == mine.sum()
        assert depth == pytest.approx(np.nanmedian(depth_image[y1:y2, x1:x2][mine]))


def test_procedural_scene_ground_truth():
    scene = SimScene(width=160, height=120, num_objects=4, seed=1)
    frame = scene.render(5)
    truth = scene.ground_truth(frame)
    again = SimScene(width=160, height=120, num_objects=4, seed=1)
    same = again.ground_truth(again.render(5))
    for name in ("boxes_xyxy", "object_ids", "class_ids", "depth_m", "depth_image_m"):
        assert np.array_equal(getattr(truth, name), getattr(same, name))
    assert truth.frame_index == 5 and 1 <= len(truth) <= 4
    _check_scene_truth(truth, frame.depth_m, frame.labels, 160, 120)
    whole = {o.object_id: o for o in frame.objects}
    for box, object_id, class_id, depth in zip(truth.boxes_xyxy, truth.object_ids,
                                               truth.class_ids, truth.depth_m):
        x1, y1, x2, y2 = whole[object_id].box_xyxy  # visible part inside the whole box
        assert x1 <= box[0] and y1 <= box[1] and box[2] <= x2 and box[3] <= y2
        assert depth == pytest.approx(whole[object_id].depth_m)  # a flat box: exact
        assert 0 <= class_id < len(CLASS_NAMES)
    other = SimScene(width=160, height=120, num_objects=4, seed=2)
    assert not np.array_equal(other.ground_truth(other.render(5)).boxes_xyxy, truth.boxes_xyxy)


def test_pybullet_scene_ground_truth_is_deterministic_and_cached(tmp_path, monkeypatch):
    pytest.importorskip("pybullet")
    monkeypatch.setenv("ROBOT_VISION_CACHE", str(tmp_path))
    seq = render_sequence(3, 2, 64, 48)
    fresh = render_sequence(3, 2, 64, 48, use_cache=False)
    cached = list((tmp_path / "pybullet").glob("*.npz"))
    assert len(cached) == 1
    again = load_sequence(cached[0])
    assert len(seq.object_bodies) == len(seq.object_classes) == 7
    for i in range(2):
        truth = seq.ground_truth(i)
        assert len(truth) >= 1
        for other in (fresh.ground_truth(i), again.ground_truth(i)):
            for name in ("boxes_xyxy", "object_ids", "class_ids", "depth_m"):
                assert np.array_equal(getattr(truth, name), getattr(other, name))
        _check_scene_truth(truth, seq.depth_m[i], seq.object_labels(i), 64, 48)
        assert np.isfinite(truth.depth_m).all() and (truth.depth_m > 0.1).all()
    # A cache file without the object table (the old format) is refused, not misread.
    old = tmp_path / "old.npz"
    with np.load(cached[0]) as data:
        np.savez(old, **{k: data[k] for k in data.files if not k.startswith("object_")})
    with pytest.raises(ConfigError, match="not a cached pybullet sequence"):
        load_sequence(old)


def test_sensor_depth_has_holes_and_the_truth_stays_exact():
    scene = SimScene(width=160, height=120, seed=0)
    truth = scene.ground_truth(scene.render(2))
    exact = truth.depth_image_m.copy()
    sensor = sensor_depth_m(truth, 0.2, seed=0)
    holes = np.isnan(sensor)
    assert 0.2 <= holes.mean() < 0.35
    assert np.array_equal(sensor[~holes], exact[~holes])
    assert np.array_equal(truth.depth_image_m, exact)
    assert np.array_equal(np.isnan(sensor_depth_m(truth, 0.2, seed=0)), holes)
    assert sensor_depth_m(truth, 0.0, seed=0) is truth.depth_image_m


# ---------------------------------------------------------------- messages

def test_ground_truth_pointcloud2_round_trip():
    k = CameraIntrinsics(100.0, 100.0, 3.5, 2.5, 8, 6)
    truth = _truth()
    msg = ground_truth_to_pointcloud2(truth, k, Header(frame_id="cam"))
    assert msg.point_step == 40 and msg.width == 2 and msg.header.frame_id == "cam"
    kinds = {f.name: f.datatype for f in msg.fields}
    assert kinds["object_id"] == kinds["class_id"] == PointField.UINT32
    assert kinds["x"] == kinds["u1"] == kinds["depth_m"] == PointField.FLOAT32
    rows = pointcloud2_to_ground_truth_rows(msg)
    assert rows.dtype == GROUND_TRUTH_ROW_DTYPE
    assert rows["object_id"].tolist() == [1, 2] and rows["class_id"].tolist() == [0, 5]
    assert np.array_equal(np.stack([rows[n] for n in ("u1", "v1", "u2", "v2")], 1),
                          truth.boxes_xyxy)
    assert np.allclose(np.stack([rows["x"], rows["y"], rows["z"]], 1), object_points_m(truth, k))
    msg.fields = [f for f in msg.fields if f.name != "depth_m"]
    with pytest.raises(InputError, match="missing field.*depth_m"):
        pointcloud2_to_ground_truth_rows(msg)


# ---------------------------------------------------------------- sim_camera over DDS

TOPICS = {"camera/color/image_raw": "/gt/rgb", "camera/depth/image_raw": "/gt/depth",
          "camera/color/camera_info": "/gt/info",
          "camera/ground_truth/objects": "/gt/objects", "camera/ground_truth/depth": "/gt/exact"}


def test_sim_camera_publishes_ground_truth_with_the_colour_stamp():
    params = {"rate_hz": 30.0, "width": 160, "height": 120, "num_objects": 4, "seed": 4,
              "cache_frames": 12, "depth_holes": 0.2, "depth_encoding": "32FC1"}
    rclpy.init()
    probe = Probe("ground_truth_probe")
    for topic, msg_type in (("/gt/rgb", Image), ("/gt/depth", Image), ("/gt/exact", Image),
                            ("/gt/objects", PointCloud2)):
        probe.listen(msg_type, topic)
    try:
        with running("sim_camera", params=params, remaps=TOPICS) as camera:
            ok = probe.spin_until(lambda: all(len(v) >= 8 for v in probe.received.values()), 60)
            assert ok, f"missing topics {probe.received.keys()}; log:\n{camera.log()}"
    finally:
        probe.destroy_node()
        rclpy.shutdown()
    got = probe.received
    colour = {stamp_to_ns(m.header.stamp): m for m in got["/gt/rgb"]}
    exact = {stamp_to_ns(m.header.stamp): m for m in got["/gt/exact"]}
    sensor = {stamp_to_ns(m.header.stamp): m for m in got["/gt/depth"]}
    scene = SimScene(160, 120, 4, seed=4, fps=30.0)
    expected = [scene.ground_truth(scene.render(i)) for i in range(12)]
    checked = 0
    for msg in got["/gt/objects"]:
        stamp = stamp_to_ns(msg.header.stamp)
        if stamp not in colour or stamp not in exact or stamp not in sensor:
            continue  # the first frames may predate one of the subscriptions
        assert msg.header.frame_id == colour[stamp].header.frame_id == \
            exact[stamp].header.frame_id == "camera_color_optical_frame"
        rows = pointcloud2_to_ground_truth_rows(msg)
        boxes = np.stack([rows[n] for n in ("u1", "v1", "u2", "v2")], 1)
        # The camera replays its cache: the table is one of the rendered frames'.
        same = [t for t in expected if np.array_equal(t.boxes_xyxy, boxes)]
        assert same, f"published boxes {boxes.tolist()} are none of the rendered frames'"
        truth = same[0]
        assert rows["object_id"].tolist() == truth.object_ids.tolist()
        assert rows["class_id"].tolist() == truth.class_ids.tolist()
        assert np.array_equal(rows["depth_m"], truth.depth_m)
        assert np.allclose(rows["z"], truth.depth_m) and np.isfinite(rows["x"]).all()
        exact_m = image_msg_to_depth_m(exact[stamp])
        assert exact[stamp].encoding == "32FC1"
        assert np.array_equal(exact_m, truth.depth_image_m)
        sensor_m = image_msg_to_depth_m(sensor[stamp])
        holes = np.isnan(sensor_m)
        assert 0.2 <= holes.mean() < 0.35
        assert np.array_equal(sensor_m[~holes], exact_m[~holes])
        checked += 1
    assert checked >= 5


def test_sim_camera_refuses_a_bad_hole_fraction():
    with running("sim_camera", params={"depth_holes": 1.5}) as camera:
        assert wait_for_log(camera, "depth_holes must be in [0, 1), got 1.5", 30), camera.log()
        assert camera.wait(10) == 2
