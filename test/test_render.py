"""Rendering for rqt: shapes, dtypes, unknown depth black, boxes really drawn."""
import numpy as np
import pytest

from robot_vision_ros.core.detections import ObjectTable, Tracks
from robot_vision_ros.core.errors import ConfigError, InputError
from robot_vision_ros.core.render import (colorize_depth, draw_objects, overlay_attention,
                                          side_by_side, track_color)


def _table(predicted: bool = False, z_m: float = 2.5) -> ObjectTable:
    tracks = Tracks(boxes_xyxy=np.array([[20, 30, 80, 90]], np.float32),
                    scores=np.array([0.87], np.float32), class_ids=np.array([1]),
                    track_ids=np.array([7]), is_predicted=np.array([predicted]))
    return ObjectTable(tracks, xyz_m=np.array([[0.1, 0.2, z_m]]),
                       extent_m=np.array([[0.5, 1.7, 0.3]]),
                       class_names=("__background__", "person"))


def test_colorize_depth_shape_range_and_black_unknown():
    depth = np.tile(np.linspace(0.5, 5.0, 64, dtype=np.float32), (48, 1))
    depth[10:20, 10:20] = np.nan
    depth[0, :] = 0.0
    out = colorize_depth(depth)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert (out[10:20, 10:20] == 0).all() and (out[0] == 0).all()
    assert (out[30].sum(axis=1) > 0).all()  # every known pixel is coloured
    assert not np.array_equal(out[30, 2], out[30, 60])  # near and far differ
    # A fixed range saturates beyond it: everything past 2 m has the far colour.
    fixed = colorize_depth(depth, min_m=0.5, max_m=2.0)
    np.testing.assert_array_equal(fixed[30, 40], fixed[30, 63])
    assert (colorize_depth(np.full((4, 5), np.nan, np.float32)) == 0).all()
    with pytest.raises(InputError, match=r"depth_m must be a non-empty \[H, W\] array"):
        colorize_depth(np.zeros((4, 5, 3), np.float32))


def test_track_colours_are_deterministic_and_distinct():
    assert track_color(3) == track_color(3)
    assert len({track_color(i) for i in range(1, 21)}) == 20


def test_draw_objects_changes_the_pixels_along_the_box_border():
    rgb = np.full((120, 160, 3), 40, np.uint8)
    out = draw_objects(rgb, _table())
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (rgb == 40).all()  # input untouched
    changed = (out != rgb).any(axis=2)
    # The left, right and bottom edges are coloured along their whole length.
    assert changed[40:85, 20].all() and changed[40:85, 80].all() and changed[90, 25:75].all()
    assert not changed[55:65, 45:55].any()  # inside of the box untouched
    np.testing.assert_array_equal(out[60, 80], track_color(7))


def test_predicted_tracks_are_dashed():
    rgb = np.zeros((120, 160, 3), np.uint8)
    solid = (draw_objects(rgb, _table(predicted=False)) != 0).any(axis=2)
    dashed = (draw_objects(rgb, _table(predicted=True)) != 0).any(axis=2)
    assert solid[35:85, 80].all()
    assert dashed[35:85, 80].any() and not dashed[35:85, 80].all()  # gaps in the dashes


def test_draw_objects_with_unknown_depth_and_empty_table():
    rgb = np.zeros((64, 64, 3), np.uint8)
    assert (draw_objects(rgb, _table(z_m=np.nan)) != 0).any()
    empty = ObjectTable(Tracks.empty(), np.zeros((0, 3)), np.zeros((0, 3)))
    np.testing.assert_array_equal(draw_objects(rgb, empty), rgb)
    with pytest.raises(InputError, match="uint8 RGB image"):
        draw_objects(np.zeros((64, 64), np.uint8), empty)


def test_overlay_attention_blends_a_resized_heat_map():
    rgb = np.full((96, 128, 3), 128, np.uint8)
    attention = np.zeros((6, 8), np.float32)
    attention[0, 0] = 1.0
    out = overlay_attention(rgb, attention, alpha=0.5)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert not np.array_equal(out[2, 2], out[90, 120])  # hot corner differs from cold one
    np.testing.assert_array_equal(overlay_attention(rgb, attention, alpha=0.0), rgb)
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\]"):
        overlay_attention(rgb, attention, alpha=1.5)


def test_side_by_side_scales_to_one_height():
    a = np.zeros((48, 64, 3), np.uint8)
    b = np.full((96, 64, 3), 255, np.uint8)
    out = side_by_side([a, b], height=48)
    assert out.shape == (48, 64 + 32, 3) and out.dtype == np.uint8
    assert (out[:, :64] == 0).all() and (out[:, 64:] == 255).all()
    with pytest.raises(InputError, match="at least one image"):
        side_by_side([], height=48)
    with pytest.raises(ConfigError, match="height must be an integer"):
        side_by_side([a], height=0)
