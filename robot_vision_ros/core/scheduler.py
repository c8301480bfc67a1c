"""Real-time scheduling: which frames to process, and a latest-frame mailbox.

The camera callbacks call :meth:`FrameSkipper.admit` (cheap) and put admitted
frames into :class:`FrameSync`, which keeps only the newest colour frame: a
frame superseded before the worker took it is dropped and counted, so an
overloaded node works on fresh data instead of a growing queue.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Optional, Tuple

from .errors import ConfigError

#: A stamp this far behind the newest one seen means the source restarted
#: (a bag looping, sim time reset): the scheduler resets instead of stalling.
BACKWARD_RESET_NS = 1_000_000_000


class FrameSkipper:
    """Decides per incoming frame whether to process it.

    ``skip_frames = N > 0`` processes every (N+1)-th frame. ``skip_frames = 0``
    is adaptive: a credit counter fed by the stamps admits frames at up to
    ``target_fps`` (2 of 3 frames of a 30 Hz camera for 20 FPS); frames
    admitted while the worker is still busy are then superseded in
    :class:`FrameSync`, so the processed rate also follows processing time.
    """

    #: Tolerance for camera jitter: a frame 10% early still earns its credit.
    EPS = 0.1
    #: Credit saved across skipped frames (so 30 -> 20 FPS admits 2 of 3), capped so
    #: that a camera pause buys at most one extra frame afterwards.
    MAX_CREDIT = 2.0

    def __init__(self, target_fps: float, skip_frames: int) -> None:
        self.configure(target_fps, skip_frames)

    def configure(self, target_fps: float, skip_frames: int) -> None:
        """Change the policy live (``ros2 param set``) without losing state."""
        if not target_fps > 0:
            raise ConfigError(f"target_fps must be > 0, got {target_fps}")
        if skip_frames < 0:
            raise ConfigError(f"skip_frames must be >= 0, got {skip_frames}")
        self.target_fps = float(target_fps)
        self.skip_frames = int(skip_frames)
        self.reset()

    def reset(self) -> None:
        self._counter = 0
        self._credit = 1.0
        self._last_stamp_ns: Optional[int] = None

    def admit(self, stamp_ns: int) -> bool:
        """True if the frame stamped ``stamp_ns`` should be processed."""
        if self.skip_frames > 0:
            take = self._counter % (self.skip_frames + 1) == 0
            self._counter += 1
            return take
        if self._last_stamp_ns is not None:
            dt_s = max(0.0, (stamp_ns - self._last_stamp_ns) * 1e-9)
            self._credit = min(self.MAX_CREDIT, self._credit + dt_s * self.target_fps)
        self._last_stamp_ns = stamp_ns
        if self._credit >= 1.0 - self.EPS:
            self._credit = max(-0.5, self._credit - 1.0)
            return True
        return False


@dataclass
class PendingFrame:
    """An undecoded frame: payloads are whatever the ROS edge stores (messages)."""

    rgb: Any
    stamp_ns: int
    received_mono: float
    depth: Any = None
    depth_stamp_ns: Optional[int] = None


class FrameSync:
    """Pairs the newest colour frame with the depth image closest in stamp.

    ``put_rgb`` replaces any colour frame the worker has not taken yet (the
    replaced one is reported through ``on_event('busy')``); ``put_depth`` keeps
    the last few depth images. ``take`` blocks until a colour frame is ready,
    waits up to ``depth_wait_s`` for its depth, and returns the pair.
    """

    def __init__(self, slop_s: float, depth_wait_s: float, use_depth: bool,
                 on_event: Callable[[str], None], depth_history: int = 8) -> None:
        self.slop_ns = int(slop_s * 1e9)
        self.depth_wait_s = depth_wait_s
        self.use_depth = use_depth
        self._on_event = on_event
        self._cond = threading.Condition()
        self._rgb: Optional[PendingFrame] = None
        self._depths: Deque[Tuple[int, Any]] = deque(maxlen=depth_history)
        self._last_depth_mono: Optional[float] = None
        self._newest_stamp_ns: Optional[int] = None
        self._closed = False

    def set_timing(self, slop_s: float, depth_wait_s: float) -> None:
        with self._cond:
            self.slop_ns = int(slop_s * 1e9)
            self.depth_wait_s = depth_wait_s

    def put_rgb(self, payload: Any, stamp_ns: int) -> bool:
        """Store a colour frame; False (and a counted drop) if its stamp is stale."""
        with self._cond:
            if self._newest_stamp_ns is not None and stamp_ns <= self._newest_stamp_ns:
                if self._newest_stamp_ns - stamp_ns > BACKWARD_RESET_NS:
                    self._reset_locked()
                    self._on_event("stamp_reset")
                else:
                    self._on_event("out_of_order")
                    return False
            self._newest_stamp_ns = stamp_ns
            if self._rgb is not None:
                self._on_event("busy")
            self._rgb = PendingFrame(payload, stamp_ns, time.monotonic())
            self._cond.notify_all()
            return True

    def put_depth(self, payload: Any, stamp_ns: int) -> None:
        with self._cond:
            if self._depths and stamp_ns < self._depths[-1][0] - BACKWARD_RESET_NS:
                self._depths.clear()
            self._depths.append((stamp_ns, payload))
            self._last_depth_mono = time.monotonic()
            self._cond.notify_all()

    def _reset_locked(self) -> None:
        self._rgb = None
        self._depths.clear()
        self._newest_stamp_ns = None

    def reset(self) -> None:
        with self._cond:
            self._reset_locked()

    def close(self) -> None:
        """Wake and stop any ``take``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _depth_stream_alive(self) -> bool:
        return (self.use_depth and self._last_depth_mono is not None
                and time.monotonic() - self._last_depth_mono < 1.0)

    def _match(self, stamp_ns: int) -> Optional[Tuple[int, Any]]:
        best = None
        for depth_stamp, payload in self._depths:
            diff = abs(depth_stamp - stamp_ns)
            if diff <= self.slop_ns and (best is None or diff < abs(best[0] - stamp_ns)):
                best = (depth_stamp, payload)
        return best

    def take(self, timeout_s: float = 0.5) -> Optional[PendingFrame]:
        """The newest colour frame with its depth (if any), or None on timeout/close."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or self._rgb is not None,
                                       timeout=timeout_s):
                return None
            if self._closed:
                return None
            frame = self._rgb
            if self._depth_stream_alive():
                deadline = time.monotonic() + self.depth_wait_s
                # Wait while no depth matches yet, a newer one may still come,
                # and no newer colour frame has replaced this one.
                while (self._match(frame.stamp_ns) is None and not self._closed
                       and self._rgb is frame
                       and (not self._depths or self._depths[-1][0] < frame.stamp_ns)):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._cond.wait(remaining):
                        break
                frame = self._rgb if self._rgb is not None else frame
                match = self._match(frame.stamp_ns)
                if match is not None:
                    frame.depth_stamp_ns, frame.depth = match
                else:
                    self._on_event("sync_no_depth")
            self._rgb = None
            return frame
