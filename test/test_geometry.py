"""object_positions / backproject against hand-computed pinhole geometry."""
import numpy as np
import pytest

from robot_vision_ros.core.errors import ConfigError, InputError
from robot_vision_ros.core.frames import CameraIntrinsics
from robot_vision_ros.core.geometry import backproject, object_positions

H, W = 120, 160
# Principal point at the exact image centre (pixel-centre convention).
K = CameraIntrinsics(fx=100.0, fy=110.0, cx=(W - 1) / 2, cy=(H - 1) / 2, width=W, height=H)


def wall(z_m: float = 2.0) -> np.ndarray:
    return np.full((H, W), z_m, np.float32)


def test_centre_box_on_a_flat_wall():
    box = np.array([[60, 40, 100, 80]], np.float32)  # centred, 40 x 40 px
    xyz, extent = object_positions(box, wall(2.0), K)
    np.testing.assert_allclose(xyz[0], [0.0, 0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(extent[0, :2], [40 * 2.0 / K.fx, 40 * 2.0 / K.fy], rtol=1e-6)
    # A flat wall has no depth spread: the minimum extent is reported.
    assert extent[0, 2] == pytest.approx(0.05)


def test_off_centre_box_back_projects_its_centre():
    box = np.array([[120, 10, 140, 30]], np.float32)  # centre (130, 20) edges -> (129.5, 19.5)
    xyz, _ = object_positions(box, wall(3.0), K)
    expected = [(129.5 - K.cx) * 3.0 / K.fx, (19.5 - K.cy) * 3.0 / K.fy, 3.0]
    np.testing.assert_allclose(xyz[0], expected, rtol=1e-6)
    assert xyz[0, 0] > 0 and xyz[0, 1] < 0  # right of and above the optical axis


def test_box_half_over_a_hole_still_gets_the_wall_depth():
    depth = wall(2.0)
    depth[:, :80] = np.nan  # left half of the image unknown
    depth[:, 80:82] = 0.0  # a column of "no return" zeros as 16UC1 gives them
    xyz, extent = object_positions(np.array([[60, 40, 100, 80]], np.float32), depth, K)
    assert xyz[0, 2] == pytest.approx(2.0)
    assert np.isfinite(extent[0]).all()


def test_box_entirely_in_a_hole_is_nan_and_others_are_not():
    depth = wall(2.0)
    depth[:60, :80] = np.nan
    boxes = np.array([[10, 10, 50, 50], [100, 70, 140, 110]], np.float32)
    xyz, extent = object_positions(boxes, depth, K)
    assert np.isnan(xyz[0]).all() and np.isnan(extent[0]).all()
    assert np.isfinite(xyz[1]).all() and xyz[1, 2] == pytest.approx(2.0)


def test_too_few_valid_pixels_is_nan():
    depth = np.full((H, W), np.nan, np.float32)
    depth[60, 80] = 1.5  # one valid pixel inside a 20 x 20 shrunk region
    box = np.array([[60, 40, 100, 80]], np.float32)
    xyz, _ = object_positions(box, depth, K, min_valid_fraction=0.1)
    assert np.isnan(xyz).all()
    xyz, _ = object_positions(box, depth, K, min_valid_fraction=0.0)
    assert xyz[0, 2] == pytest.approx(1.5)


def test_foreground_object_wins_over_the_background_plane():
    # A person-like object at 1.2 m (with a 0.3 m depth profile) in front of a wall
    # at 4 m; the detector's box is 25 % larger than the object on each side.
    depth = wall(4.0)
    obj = np.linspace(1.05, 1.35, 40, dtype=np.float32)[None, :].repeat(60, axis=0)
    depth[30:90, 60:100] = obj
    box = np.array([[50, 15, 110, 105]], np.float32)
    xyz, extent = object_positions(box, depth, K, shrink=0.5)
    assert xyz[0, 2] == pytest.approx(1.2, abs=0.02)
    assert 0.15 < extent[0, 2] < 0.35  # 10th-90th percentile of the profile seen
    # Without shrinking, the median would be pulled towards the wall.
    xyz_full, _ = object_positions(box, depth, K, shrink=1.0)
    assert xyz_full[0, 2] > xyz[0, 2] + 0.05


def test_boxes_outside_or_non_finite_are_nan_and_empty_input_works():
    boxes = np.array([[200, 200, 260, 260], [np.nan, 0, 10, 10], [-30, -30, 10, 10]],
                     np.float32)
    xyz, extent = object_positions(boxes, wall(2.0), K)
    assert np.isnan(xyz[:2]).all()
    assert xyz[2, 2] == pytest.approx(2.0)  # clipped to the visible corner
    xyz, extent = object_positions(np.zeros((0, 4), np.float32), wall(), K)
    assert xyz.shape == (0, 3) and extent.shape == (0, 3) and xyz.dtype == np.float32


def test_intrinsics_must_match_the_depth_size():
    depth = np.full((H // 2, W // 2), 2.0, np.float32)
    with pytest.raises(InputError, match=r"scale them with CameraIntrinsics.scaled\(80, 60\)") \
            as err:
        object_positions(np.array([[0, 0, 10, 10]], np.float32), depth, K)
    assert err.value.reason == "bad_size"
    xyz, _ = object_positions(np.array([[30, 20, 50, 40]], np.float32), depth,
                              K.scaled(W // 2, H // 2))
    np.testing.assert_allclose(xyz[0], [0.0, 0.0, 2.0], atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(InputError, match="boxes_xyxy must be") as err:
        object_positions(np.zeros((2, 3)), wall(), K)
    assert err.value.reason == "bad_size"
    with pytest.raises(InputError, match="float metres") as err:
        object_positions(np.zeros((0, 4)), np.full((H, W), 2000, np.uint16), K)
    assert err.value.reason == "bad_dtype"
    with pytest.raises(ConfigError, match="shrink must be in"):
        object_positions(np.zeros((0, 4)), wall(), K, shrink=0.0)


def test_backproject_matches_the_pinhole_model():
    depth = wall(2.0)
    depth[0, 0] = np.nan
    points = backproject(depth, K)
    assert points.shape == (H, W, 3) and points.dtype == np.float32
    assert np.isnan(points[0, 0]).all()
    i, j = 100, 30
    np.testing.assert_allclose(points[i, j], [(j - K.cx) * 2 / K.fx, (i - K.cy) * 2 / K.fy, 2.0],
                               rtol=1e-6)
    # object_positions of a 1-pixel box equals the back-projected pixel.
    xyz, _ = object_positions(np.array([[j, i, j + 1, i + 1]], np.float32), depth, K)
    np.testing.assert_allclose(xyz[0], points[i, j], rtol=1e-6)
    with pytest.raises(InputError, match="intrinsics are for 160x120"):
        backproject(np.ones((10, 10), np.float32), K)
