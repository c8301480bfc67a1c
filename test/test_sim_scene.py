"""The procedural simulated scene: deterministic, exact depth, consistent ground truth."""
import numpy as np
import pytest

from robot_vision_ros.core.errors import ConfigError
from robot_vision_ros.core.sim_scene import SimScene


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = SimScene(seed=3).render(10), SimScene(seed=3).render(10), SimScene(seed=4).render(10)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth_m, b.depth_m)
    assert not np.array_equal(a.rgb, c.rgb)


def test_ground_truth_matches_the_depth_image():
    frame = SimScene(width=320, height=240, num_objects=4, seed=1).render(5)
    assert frame.rgb.shape == (240, 320, 3) and frame.depth_m.shape == (240, 320)
    assert np.isfinite(frame.depth_m).all() and frame.depth_m.min() > 0
    assert len(frame.objects) == 4
    for obj in frame.objects:
        x1, y1, x2, y2 = obj.box_xyxy
        region = frame.depth_m[y1:y2, x1:x2]
        # Every pixel of the box is the object or something nearer in front of it.
        assert (region <= obj.depth_m + 1e-6).all()
        assert np.isclose(region, obj.depth_m).any()


def test_objects_move_between_frames():
    scene = SimScene(num_objects=3, seed=2)
    b0 = [o.box_xyxy for o in scene.render(0).objects]
    b1 = [o.box_xyxy for o in scene.render(15).objects]
    assert b0 != b1


@pytest.mark.parametrize("kwargs,match", [({"width": 8}, "at least 32x32"),
                                          ({"num_objects": -1}, "num_objects"),
                                          ({"fps": 0}, "fps")])
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SimScene(**kwargs)
