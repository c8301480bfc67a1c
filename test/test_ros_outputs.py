"""Detection and depth output messages with the real message classes."""
from __future__ import annotations

import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from robot_vision_ros.core.detections import ObjectTable, Tracks
from robot_vision_ros.core.errors import ConfigError, InputError
from robot_vision_ros.core.frames import CameraIntrinsics
from robot_vision_ros.ros.conversions import pack_pointcloud2
from robot_vision_ros.ros.outputs import (
    MIN_MARKER_EXTENT_M, OBJECT_ROW_DTYPE, camera_info_to_intrinsics, depth_camera_info,
    intrinsics_to_camera_info, marker_ids, object_table_to_markers,
    object_table_to_pointcloud2, pointcloud2_to_object_rows, track_color_rgb)

NAN = float("nan")
CONTRACT_FIELDS = [  # (name, datatype, offset) of /vision/detections, in order
    ("x", PointField.FLOAT32, 0), ("y", PointField.FLOAT32, 4), ("z", PointField.FLOAT32, 8),
    ("track_id", PointField.UINT32, 12), ("class_id", PointField.UINT32, 16),
    ("score", PointField.FLOAT32, 20), ("u1", PointField.FLOAT32, 24),
    ("v1", PointField.FLOAT32, 28), ("u2", PointField.FLOAT32, 32),
    ("v2", PointField.FLOAT32, 36),
]


def _header() -> Header:
    return Header(stamp=Time(sec=1_700_000_000, nanosec=987_654_321),
                  frame_id="camera_color_optical_frame")


def _table(track_ids=(7, 12, 3, 40), predicted=None) -> ObjectTable:
    """Four objects; the 2nd and 4th have no depth, the 3rd a NaN and a tiny extent."""
    n = len(track_ids)
    rng = np.random.default_rng(5)
    xy = rng.uniform(10, 300, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (n, 2))], axis=1)
    tracks = Tracks(boxes, rng.uniform(0.3, 1.0, n), np.arange(n) % 3, np.array(track_ids),
                    np.zeros(n, bool) if predicted is None else np.array(predicted))
    xyz = np.array([[0.5, -0.2, 2.0], [NAN, NAN, NAN], [-1.25, 0.4, 4.5],
                    [0.1, NAN, NAN]][:n])
    extent = np.array([[0.4, 0.8, 0.3], [0.2, 0.2, 0.2], [NAN, 0.001, 0.6],
                       [1.0, 1.0, 1.0]][:n])
    return ObjectTable(tracks, xyz, extent, class_names=("person", "chair"))


def _cubes(array_: MarkerArray):
    return [m for m in array_.markers if m.type == Marker.CUBE and m.action == Marker.ADD]


def _texts(array_: MarkerArray):
    return [m for m in array_.markers
            if m.type == Marker.TEXT_VIEW_FACING and m.action == Marker.ADD]


# ---------------------------------------------------------------- PointCloud2

def test_object_cloud_has_the_contract_layout():
    msg = object_table_to_pointcloud2(_table(), _header())
    assert [(f.name, f.datatype, f.offset, f.count) for f in msg.fields] == \
        [(name, datatype, offset, 1) for name, datatype, offset in CONTRACT_FIELDS]
    assert msg.point_step == 40 and msg.height == 1 and msg.width == 4
    assert msg.row_step == 160 and len(msg.data) == 160
    assert msg.is_bigendian is False
    assert msg.is_dense is False  # objects without depth carry NaN xyz
    assert msg.header == _header()


def test_object_cloud_round_trip_keeps_values_and_nan():
    table = _table()
    rows = pointcloud2_to_object_rows(object_table_to_pointcloud2(table, _header()))
    assert rows.dtype == OBJECT_ROW_DTYPE and rows.shape == (4,)
    xyz = np.stack([rows["x"], rows["y"], rows["z"]], axis=1)
    np.testing.assert_array_equal(xyz, table.xyz_m)  # NaN positions compare equal here
    assert np.isnan(xyz[1]).all() and np.isnan(xyz[3, 1:]).all()
    np.testing.assert_array_equal(rows["track_id"], [7, 12, 3, 40])
    np.testing.assert_array_equal(rows["class_id"], table.tracks.class_ids)
    np.testing.assert_array_equal(rows["score"], table.tracks.scores)
    boxes = np.stack([rows["u1"], rows["v1"], rows["u2"], rows["v2"]], axis=1)
    np.testing.assert_array_equal(boxes, table.tracks.boxes_xyxy)


def test_empty_table_gives_valid_empty_cloud_with_same_fields():
    empty = ObjectTable(Tracks.empty(), np.zeros((0, 3)), np.zeros((0, 3)))
    msg = object_table_to_pointcloud2(empty, _header())
    full = object_table_to_pointcloud2(_table(), _header())
    assert msg.width == 0 and msg.height == 1 and len(msg.data) == 0 and msg.row_step == 0
    assert list(msg.fields) == list(full.fields) and msg.point_step == 40
    assert msg.header == _header()
    rows = pointcloud2_to_object_rows(msg)
    assert rows.shape == (0,) and rows.dtype == OBJECT_ROW_DTYPE


def test_object_rows_read_fields_by_name_from_another_layout():
    # A producer with the fields in a different order plus an extra one.
    other = np.zeros(2, dtype=[
        ("score", "<f4"), ("extra", "<f8"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
        ("class_id", "<u4"), ("track_id", "<u4"),
        ("u1", "<f4"), ("v1", "<f4"), ("u2", "<f4"), ("v2", "<f4")])
    other["track_id"] = [5, 9]
    other["z"] = [1.5, NAN]
    rows = pointcloud2_to_object_rows(pack_pointcloud2(other, _header()))
    np.testing.assert_array_equal(rows["track_id"], [5, 9])
    np.testing.assert_array_equal(rows["z"], [1.5, NAN])


def test_cloud_without_object_fields_is_rejected():
    cloud = pack_pointcloud2(np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")]),
                             _header())
    with pytest.raises(InputError, match="not an object table.*track_id") as info:
        pointcloud2_to_object_rows(cloud)
    assert info.value.reason == "missing_field"


def test_track_id_that_does_not_fit_uint32_is_rejected():
    with pytest.raises(InputError, match="track_ids must fit UINT32"):
        object_table_to_pointcloud2(_table(track_ids=(7, -1, 3, 40)), _header())
    with pytest.raises(InputError, match="track_ids must fit UINT32"):
        object_table_to_pointcloud2(_table(track_ids=(7, 2 ** 32, 3, 40)), _header())


# ---------------------------------------------------------------- markers

def test_markers_deleteall_first_then_cube_and_label_per_object_with_depth():
    array_ = object_table_to_markers(_table(), _header(), lifetime_s=0.5)
    assert isinstance(array_, MarkerArray)
    first = array_.markers[0]
    assert first.action == Marker.DELETEALL and first.ns == "vision"
    assert len(array_.markers) == 1 + 2 * 2  # objects 0 and 2 have depth
    cubes, texts = _cubes(array_), _texts(array_)
    assert len(cubes) == 2 and len(texts) == 2
    for m in array_.markers:
        assert m.header == _header() and m.ns == "vision"
    for m in cubes + texts:
        assert (m.lifetime.sec, m.lifetime.nanosec) == (0, 500_000_000)
        q = m.pose.orientation
        assert (q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 1.0)


def test_objects_without_depth_get_no_markers():
    table = _table()
    ids = {m.id for m in object_table_to_markers(table, _header(), 1.0).markers[1:]}
    assert ids == {*marker_ids(7), *marker_ids(3)}
    no_depth = ObjectTable(table.tracks, np.full((4, 3), NAN), table.extent_m)
    only_delete = object_table_to_markers(no_depth, _header(), 1.0).markers
    assert [m.action for m in only_delete] == [Marker.DELETEALL]


def test_marker_positions_scales_and_text():
    table = _table()
    array_ = object_table_to_markers(table, _header(), 1.0, namespace="cam1")
    cubes = {m.id: m for m in _cubes(array_)}
    texts = {m.id: m for m in _texts(array_)}
    cube7, text7 = cubes[marker_ids(7)[0]], texts[marker_ids(7)[1]]
    p = cube7.pose.position
    assert (p.x, p.y, p.z) == pytest.approx((0.5, -0.2, 2.0))
    assert (cube7.scale.x, cube7.scale.y, cube7.scale.z) == pytest.approx((0.4, 0.8, 0.3))
    assert text7.text == f"person #7 {table.tracks.scores[0]:.2f} z=2.00m"
    t = text7.pose.position
    assert (t.x, t.z) == pytest.approx((0.5, 2.0))
    assert t.y < -0.2 - 0.4  # above the cube top: optical y points down
    # NaN and too-small extents become the minimum edge.
    cube3 = cubes[marker_ids(3)[0]]
    assert (cube3.scale.x, cube3.scale.y, cube3.scale.z) == \
        pytest.approx((MIN_MARKER_EXTENT_M, MIN_MARKER_EXTENT_M, 0.6))
    text3 = texts[marker_ids(3)[1]]
    assert text3.text == f"class_2 #3 {table.tracks.scores[2]:.2f} z=4.50m"
    assert all(m.ns == "cam1" for m in array_.markers)


def test_marker_ids_and_colours_are_stable_per_track_across_calls():
    first = object_table_to_markers(_table(track_ids=(7, 12, 3, 40)), _header(), 1.0)
    # Same tracks in another order and with other neighbours on the next frame.
    second = object_table_to_markers(_table(track_ids=(3, 12, 7, 41)), _header(), 1.0)
    by_text_id = {m.text.split()[1]: m for m in _texts(first) + _texts(second)}
    first_ids = {m.text.split()[1]: m.id for m in _texts(first)}
    second_ids = {m.text.split()[1]: m.id for m in _texts(second)}
    assert first_ids == second_ids == {"#7": marker_ids(7)[1], "#3": marker_ids(3)[1]}
    cube_colours = [{m.id: (m.color.r, m.color.g, m.color.b) for m in _cubes(a)}
                    for a in (first, second)]
    assert cube_colours[0] == cube_colours[1]
    assert cube_colours[0][marker_ids(7)[0]] == pytest.approx(track_color_rgb(7))
    assert by_text_id["#7"].color.a == 1.0
    ids = [m.id for m in first.markers[1:]]
    assert len(ids) == len(set(ids))


def test_colours_differ_between_neighbouring_tracks_and_stay_in_range():
    colours = np.array([track_color_rgb(i) for i in range(1, 21)])
    assert ((colours >= 0) & (colours <= 1)).all()
    assert np.abs(np.diff(colours, axis=0)).sum(axis=1).min() > 0.2


def test_predicted_tracks_are_drawn_fainter():
    table = _table(predicted=[False, False, True, False])
    cubes = {m.id: m for m in _cubes(object_table_to_markers(table, _header(), 1.0))}
    assert cubes[marker_ids(3)[0]].color.a < cubes[marker_ids(7)[0]].color.a


def test_huge_track_ids_still_give_int32_marker_ids():
    cube_id, text_id = marker_ids(2 ** 40 + 5)
    assert 0 <= cube_id < text_id < 2 ** 31


def test_bad_lifetime_is_rejected():
    for bad in (-1.0, math.inf, NAN):
        with pytest.raises(ConfigError, match="lifetime_s must be a finite number >= 0"):
            object_table_to_markers(_table(), _header(), bad)


def test_empty_table_gives_only_deleteall():
    empty = ObjectTable(Tracks.empty(), np.zeros((0, 3)), np.zeros((0, 3)))
    markers = object_table_to_markers(empty, _header(), 1.0).markers
    assert [m.action for m in markers] == [Marker.DELETEALL]


# ---------------------------------------------------------------- camera info

def test_depth_camera_info_halves_vga_intrinsics():
    k = CameraIntrinsics(fx=615.0, fy=610.0, cx=319.5, cy=239.5, width=640, height=480)
    info = depth_camera_info(k, 320, 240, _header())
    assert isinstance(info, CameraInfo)
    assert (info.width, info.height) == (320, 240) and info.header == _header()
    expected = k.scaled(320, 240)
    assert expected.fx == pytest.approx(307.5) and expected.fy == pytest.approx(305.0)
    assert expected.cx == pytest.approx(159.5) and expected.cy == pytest.approx(119.5)
    np.testing.assert_allclose(info.k, [expected.fx, 0, expected.cx,
                                        0, expected.fy, expected.cy, 0, 0, 1])
    np.testing.assert_allclose(info.p, [expected.fx, 0, expected.cx, 0,
                                        0, expected.fy, expected.cy, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(info.r, np.eye(3).ravel())
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    back = camera_info_to_intrinsics(info)
    assert (back.fx, back.fy, back.cx, back.cy, back.width, back.height) == \
        pytest.approx((expected.fx, expected.fy, expected.cx, expected.cy, 320, 240))


def test_depth_camera_info_at_native_size_is_unchanged():
    k = CameraIntrinsics(fx=500.25, fy=501.5, cx=321.7, cy=241.3, width=640, height=480)
    assert camera_info_to_intrinsics(depth_camera_info(k, 640, 480, _header())) == k


def test_camera_info_round_trip_and_non_uniform_scaling():
    k = CameraIntrinsics(fx=600.0, fy=600.0, cx=300.0, cy=200.0, width=640, height=480)
    assert camera_info_to_intrinsics(intrinsics_to_camera_info(k, _header())) == k
    wide = camera_info_to_intrinsics(depth_camera_info(k, 160, 240, _header()))
    assert wide.fx == pytest.approx(150.0) and wide.fy == pytest.approx(300.0)
    assert wide.cx == pytest.approx((300.0 + 0.5) / 4 - 0.5)
    assert wide.cy == pytest.approx((200.0 + 0.5) / 2 - 0.5)


def test_invalid_camera_info_gives_none():
    assert camera_info_to_intrinsics(CameraInfo(width=640, height=480)) is None  # K zeros
    good = intrinsics_to_camera_info(
        CameraIntrinsics(600.0, 600.0, 320.0, 240.0, 640, 480), _header())
    for index, value in ((0, -600.0), (4, 0.0), (2, NAN), (5, math.inf)):
        bad = intrinsics_to_camera_info(
            CameraIntrinsics(600.0, 600.0, 320.0, 240.0, 640, 480), _header())
        bad.k[index] = value
        assert camera_info_to_intrinsics(bad) is None, (index, value)
    good.width = 0
    assert camera_info_to_intrinsics(good) is None


def test_bad_depth_size_is_rejected():
    k = CameraIntrinsics(600.0, 600.0, 320.0, 240.0, 640, 480)
    with pytest.raises(InputError, match="depth image size must be positive, got 0x240"):
        depth_camera_info(k, 0, 240, _header())
