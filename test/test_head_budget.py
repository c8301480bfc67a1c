"""Head scheduling: every_n cadence and the adaptive time budget (deterministic clock)."""
import pytest

from robot_vision_ros.core.errors import ConfigError
from robot_vision_ros.core.head_budget import HeadScheduler


def _run_frames(sched, n_frames, encoder_s, head_cost_s, head="detection"):
    """Simulate frames: encoder time, then the head if scheduled. Returns runs per frame."""
    t, runs = 0.0, []
    for _ in range(n_frames):
        sched.start_frame(now=t)
        t += encoder_s
        run = sched.should_run(head, now=t)
        if run:
            t += head_cost_s
            sched.ran(head, head_cost_s)
        sched.end_frame(now=t)
        runs.append(run)
        t = max(t, (len(runs)) * sched.period_s)  # next frame arrives at the camera rate
    return runs


def test_every_n_cadence_without_budget():
    sched = HeadScheduler({"depth": 3, "detection": 1}, target_fps=30, adaptive=False)
    runs = _run_frames(sched, 9, 0.001, 0.001, head="depth")
    assert runs == [True, False, False] * 3


def test_cheap_head_runs_every_frame_when_it_fits():
    sched = HeadScheduler({"depth": 1, "detection": 1}, target_fps=30)
    assert all(_run_frames(sched, 30, encoder_s=0.005, head_cost_s=0.010))


def test_expensive_head_is_deferred_so_frames_keep_the_period():
    sched = HeadScheduler({"depth": 1, "detection": 1}, target_fps=30)
    # 5 ms features + a 60 ms head: it cannot run every frame at 30 FPS.
    runs = _run_frames(sched, 60, encoder_s=0.005, head_cost_s=0.060)
    rate = sum(runs) / len(runs)
    assert 0.05 < rate < 0.5, runs
    # The head still runs (max_defer guarantees it) and never twice in a row.
    assert not any(a and b for a, b in zip(runs, runs[1:]))


def test_a_head_slower_than_any_budget_still_runs_after_max_defer():
    sched = HeadScheduler({"depth": 1, "detection": 1}, target_fps=30, max_defer=5)
    runs = _run_frames(sched, 30, encoder_s=0.030, head_cost_s=0.5)
    assert sum(runs) >= 4
    gaps = [i for i, r in enumerate(runs) if r]
    assert all(b - a <= 6 for a, b in zip(gaps, gaps[1:]))


def test_reset_and_live_configure():
    sched = HeadScheduler({"depth": 2, "detection": 1}, target_fps=30, adaptive=False)
    _run_frames(sched, 1, 0.001, 0.001, head="depth")
    sched.reset()
    assert sched.due("depth")
    sched.configure({"depth": 5}, target_fps=10)
    assert sched.period_s == pytest.approx(0.1)


@pytest.mark.parametrize("every_n,fps,match", [({"depth": 0}, 30, "every_n"),
                                               ({"colour": 1}, 30, "unknown head"),
                                               ({"depth": 1}, 0, "target_fps")])
def test_bad_settings(every_n, fps, match):
    with pytest.raises(ConfigError, match=match):
        HeadScheduler(every_n, target_fps=fps)


def test_negligible_heads_run_even_when_the_frame_is_over_budget():
    sched = HeadScheduler({"depth": 1, "detection": 1}, target_fps=30)
    runs = _run_frames(sched, 20, encoder_s=0.060, head_cost_s=0.0005, head="depth")
    assert all(runs)
