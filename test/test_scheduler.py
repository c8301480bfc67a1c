"""Frame skipping, latest-frame pairing and accounting (pure Python, no ROS)."""
import threading
import time

import pytest

from robot_vision_ros.core.errors import ConfigError
from robot_vision_ros.core.scheduler import FrameSkipper, FrameSync
from robot_vision_ros.core.stats import FrameStats, LatencyWindow

MS = 1_000_000


def _admitted(skipper, stamps):
    return [s for s in stamps if skipper.admit(s)]


def test_fixed_skipping_processes_every_n_plus_1th_frame():
    stamps = [i * 33 * MS for i in range(12)]
    assert _admitted(FrameSkipper(30, 2), stamps) == stamps[::3]


@pytest.mark.parametrize("camera_hz,target,expected", [(30, 30, 30), (30, 15, 15),
                                                        (30, 20, 20), (60, 30, 30),
                                                        (30, 60, 30)])
def test_adaptive_skipping_holds_the_target_rate(camera_hz, target, expected):
    period = int(1e9 / camera_hz)
    stamps = [i * period for i in range(camera_hz * 4)]  # four seconds
    n = len(_admitted(FrameSkipper(target, 0), stamps))
    assert abs(n / 4 - expected) <= 1


def test_adaptive_skipping_tolerates_camera_jitter():
    import random
    rnd = random.Random(0)
    t, stamps = 0, []
    for _ in range(300):
        t += int((33.3 + rnd.uniform(-4, 4)) * MS)
        stamps.append(t)
    assert len(_admitted(FrameSkipper(30, 0), stamps)) >= 290


def test_skipper_rejects_bad_settings():
    with pytest.raises(ConfigError, match="target_fps"):
        FrameSkipper(0, 0)
    with pytest.raises(ConfigError, match="skip_frames"):
        FrameSkipper(30, -1)


def _sync(events, use_depth=True, wait_s=0.05):
    return FrameSync(slop_s=0.01, depth_wait_s=wait_s, use_depth=use_depth,
                     on_event=events.append)


def test_newest_frame_supersedes_unprocessed_ones():
    events = []
    sync = _sync(events, use_depth=False)
    for i in range(5):
        sync.put_rgb(f"rgb{i}", i * 33 * MS)
    frame = sync.take(0.1)
    assert frame.rgb == "rgb4" and events.count("busy") == 4
    assert sync.take(0.01) is None


def test_pairs_depth_with_closest_stamp_within_slop():
    events = []
    sync = _sync(events)
    sync.put_depth("d0", 0)
    sync.put_depth("d1", 33 * MS)
    sync.put_depth("d2", 66 * MS)
    sync.put_rgb("rgb", 35 * MS)
    frame = sync.take(0.1)
    assert frame.depth == "d1" and frame.depth_stamp_ns == 33 * MS and events == []


def test_waits_for_late_depth_then_gives_up_counting_it():
    events = []
    sync = _sync(events, wait_s=0.2)
    sync.put_depth("d0", 0)
    sync.put_rgb("rgb", 33 * MS)
    threading.Timer(0.05, lambda: sync.put_depth("d1", 33 * MS)).start()
    frame = sync.take(0.5)
    assert frame.depth == "d1"
    sync.put_rgb("rgb2", 66 * MS)
    t0 = time.monotonic()
    frame = sync.take(0.5)
    assert frame.depth is None and "sync_no_depth" in events
    assert 0.15 < time.monotonic() - t0 < 1.0


def test_out_of_order_is_dropped_and_a_big_jump_back_resets():
    events = []
    sync = _sync(events, use_depth=False)
    assert sync.put_rgb("a", 5_000 * MS)
    assert not sync.put_rgb("old", 4_990 * MS)
    assert events == ["out_of_order"]
    assert sync.put_rgb("restart", 10 * MS)  # a bag looping back to its start
    assert events[-1] == "stamp_reset"
    assert sync.take(0.1).rgb == "restart"


def test_close_wakes_a_waiting_take():
    sync = _sync([], use_depth=False)
    threading.Timer(0.05, sync.close).start()
    assert sync.take(2.0) is None


def test_stats_counts_and_percentiles():
    stats = FrameStats()
    for _ in range(10):
        stats.count("received")
    stats.skip("busy", 3)
    for v in range(1, 101):
        stats.observe("processing_ms", v)
    snap = stats.snapshot()
    assert snap["received"] == 10 and snap["skipped_busy"] == 3 and snap["skipped_total"] == 3
    assert snap["processing_ms_p50"] == pytest.approx(50.5)
    assert snap["processing_ms_p99"] == pytest.approx(99.01)
    assert LatencyWindow().percentiles()["p50"] != LatencyWindow().percentiles()["p50"]  # NaN
