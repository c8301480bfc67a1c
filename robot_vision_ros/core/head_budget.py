"""Which heads (depth, detection) run on a processed frame: cadence plus time budget.

Features run on every processed frame; the heads are extras. A head is *due*
``every_n`` processed frames after it last ran. With ``adaptive`` on, a due
head runs only when the time left in this frame's budget (one frame period at
``target_fps``, minus what the frame has used so far, plus slack saved by
earlier quick frames, at most one period) covers the head's measured cost; if
not it is deferred to a later frame and counted. A head deferred
``max_defer`` frames in a row runs anyway, so a head slower than any budget
still runs at a reduced rate instead of never. A head whose cost is below
``NEGLIGIBLE`` of the period (cleaning the sensor depth, say) is never
deferred: skipping it would save nothing. Without ``adaptive`` a due head
always runs.
"""
from __future__ import annotations

import time
from typing import Dict, Optional

from .errors import ConfigError

HEADS = ("depth", "detection")


def checked_every_n(every_n: Dict[str, int]) -> Dict[str, int]:
    """``{head: n}`` with known heads and ``n >= 1``; ConfigError otherwise."""
    out = {}
    for head, n in every_n.items():
        if head not in HEADS:
            raise ConfigError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
        if int(n) < 1:
            raise ConfigError(f"{head}.every_n must be >= 1, got {n}")
        out[head] = int(n)
    return out


class HeadScheduler:
    """Per-frame decisions for the heads; call ``start_frame``, ``should_run``/``ran``,
    ``end_frame`` in that order for each processed frame."""

    #: Weight of the newest cost sample in the moving average.
    ALPHA = 0.3
    #: Heads cheaper than this fraction of the frame period always run when due.
    NEGLIGIBLE = 0.05

    def __init__(self, every_n: Dict[str, int], target_fps: float, adaptive: bool = True,
                 max_defer: int = 30) -> None:
        self.adaptive = adaptive
        self.max_defer = int(max_defer)
        self._every_n: Dict[str, int] = {}
        self._cost_s: Dict[str, Optional[float]] = {h: None for h in HEADS}
        self.configure(every_n, target_fps, adaptive)
        self.reset()

    def configure(self, every_n: Dict[str, int], target_fps: float,
                  adaptive: Optional[bool] = None) -> None:
        """Change rates live; cadence and cost estimates are kept."""
        self._every_n.update(checked_every_n(every_n))
        if not target_fps > 0:
            raise ConfigError(f"target_fps must be > 0, got {target_fps}")
        self.period_s = 1.0 / target_fps
        if adaptive is not None:
            self.adaptive = adaptive

    @property
    def every_n(self) -> Dict[str, int]:
        """The configured cadence per head."""
        return dict(self._every_n)

    def reset(self) -> None:
        """Start over (stamp reset): every head is due on the next frame."""
        self._since_run = {h: None for h in HEADS}
        self._deferred = {h: 0 for h in HEADS}
        self._slack_s = 0.0
        self._frame_start: Optional[float] = None

    def start_frame(self, now: Optional[float] = None) -> None:
        self._frame_start = time.perf_counter() if now is None else now

    def _remaining_s(self, now: Optional[float]) -> float:
        now = time.perf_counter() if now is None else now
        used = now - (self._frame_start if self._frame_start is not None else now)
        return self.period_s - used + max(self._slack_s, 0.0)

    def due(self, head: str) -> bool:
        since = self._since_run[head]
        return since is None or since + 1 >= self._every_n.get(head, 1)

    def should_run(self, head: str, now: Optional[float] = None) -> bool:
        """Decide for ``head`` on the current frame (counts a deferral when it says no)."""
        if not self.due(head):
            return False
        cost = self._cost_s[head]
        if (not self.adaptive or cost is None or cost <= self.NEGLIGIBLE * self.period_s
                or cost <= self._remaining_s(now) or self._deferred[head] >= self.max_defer):
            return True
        self._deferred[head] += 1
        return False

    def ran(self, head: str, seconds: float) -> None:
        """Record that ``head`` ran and how long it took."""
        old = self._cost_s[head]
        self._cost_s[head] = seconds if old is None else old + self.ALPHA * (seconds - old)
        self._since_run[head] = -1  # becomes 0 at end_frame
        self._deferred[head] = 0

    def end_frame(self, now: Optional[float] = None) -> None:
        now = time.perf_counter() if now is None else now
        if self._frame_start is not None:
            used = now - self._frame_start
            self._slack_s = min(self.period_s, max(-self.period_s,
                                                   self._slack_s + self.period_s - used))
        for head in HEADS:
            if self._since_run[head] is not None:
                self._since_run[head] += 1
        self._frame_start = None


class HeadCadence:
    """``every_n`` by processed-frame index, for heads on their own thread.

    The heads thread sees only some processed frames (it takes the newest one
    when it is free), so the cadence counts frame indices, not calls: a head
    is due when ``every_n`` processed frames have passed since it last ran.
    There is no time budget: heads on their own thread never hold up features.
    Same call order as :class:`HeadScheduler`: ``start_frame(index)``,
    ``should_run``/``ran``, ``end_frame``. The heads' costs are not needed to
    decide; the heads thread reports them (``heads_ms``).
    """

    def __init__(self, every_n: Dict[str, int]) -> None:
        self._every_n: Dict[str, int] = {}
        self.configure(every_n)
        self.reset()

    def configure(self, every_n: Dict[str, int]) -> None:
        """Change rates live; cadence and cost estimates are kept."""
        self._every_n.update(checked_every_n(every_n))

    def reset(self) -> None:
        """Start over: every head is due on the next frame."""
        self._last_index: Dict[str, Optional[int]] = {h: None for h in HEADS}
        self._index = 0

    def start_frame(self, index: int) -> None:
        self._index = int(index)

    def due(self, head: str) -> bool:
        last = self._last_index[head]
        # An index below the last run means the count restarted (a new stream).
        return (last is None or self._index < last
                or self._index - last >= self._every_n.get(head, 1))

    def should_run(self, head: str) -> bool:
        return self.due(head)

    def ran(self, head: str, seconds: float) -> None:
        """Record that ``head`` ran on this frame (``seconds``: the policy interface's)."""
        del seconds
        self._last_index[head] = self._index

    def end_frame(self) -> None:
        """Nothing to settle: kept for the same call order as HeadScheduler."""
