"""The heads thread: depth and detection on the newest processed frame.

The inference thread publishes features and hands each processed frame over
with :meth:`HeadsWorker.offer`; a frame that was handed over but not yet
taken is replaced by the newer one (counted ``heads_superseded``), so the
heads never queue work and what they publish is as fresh as they can make it.
On a CPU the thread uses its own (small) number of intra-op threads and, on
Linux, a lower priority (niceness), so the encoder keeps the cores it needs
for the target rate and the heads use what is left.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Optional, Tuple

import torch

from .errors import InputError, ModelError
from .frames import RgbdFrame
from .perception import HeadsResult
from .stats import FrameStats
from .worker_thread import WorkerThread

log = logging.getLogger(__name__)

RunHeads = Callable[[RgbdFrame, int], HeadsResult]
PublishHeads = Callable[[HeadsResult, RgbdFrame], None]
Warn = Callable[[str], None]


def lower_priority(nice: int) -> Optional[int]:
    """Raise the calling thread's niceness to at least ``nice``; its niceness after,
    or None where threads have no niceness of their own (not Linux)."""
    get = getattr(os, "getpriority", None)
    native_id = getattr(threading, "get_native_id", None)
    if get is None or native_id is None or not os.uname().sysname == "Linux":
        return None
    tid = native_id()
    try:
        # On Linux PRIO_PROCESS with a thread id sets that one thread's niceness.
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, get(os.PRIO_PROCESS, tid)))
        return get(os.PRIO_PROCESS, tid)
    except OSError as exc:
        log.warning("cannot lower the heads thread's priority: %s", exc)
        return None


class LatestSlot:
    """A one-item mailbox: ``put`` replaces what is there, ``take`` waits for an item."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Optional[Tuple[RgbdFrame, int]] = None
        self._closed = False

    def put(self, item: Tuple[RgbdFrame, int]) -> bool:
        """Store ``item``; True when it replaced one that was never taken."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout_s: float) -> Optional[Tuple[RgbdFrame, int]]:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            return item

    def open(self) -> None:
        with self._cond:
            self._closed = False
            self._item = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()


class HeadsWorker(WorkerThread):
    """Thread: newest offered frame -> ``run`` -> ``publish``, counting everything.

    ``threads``: torch intra-op threads of this thread on the CPU (0 = torch's
    default; OpenMP thread counts are per calling thread, so this does not
    change the encoder's). ``nice``: niceness of this thread on Linux (threads
    have their own), 0 = unchanged. InputError/ModelError drop the heads of
    that frame (counted ``heads_<reason>``, reported through ``warn``); the
    thread goes on.
    """

    def __init__(self, run: RunHeads, publish: PublishHeads, stats: FrameStats, warn: Warn,
                 clock_ns: Callable[[], int], threads: int = 1, nice: int = 0) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be in 0..19, got {nice}")
        self._nice = int(nice)
        self._run_heads = run
        self._publish = publish
        self._stats = stats
        self._warn = warn
        self._clock_ns = clock_ns
        self._threads = int(threads)
        self._slot = LatestSlot()
        #: The heads thread's niceness once it runs (None where it cannot be read).
        self.niceness: Optional[int] = None
        super().__init__("vision-heads")

    def _on_start(self) -> None:
        self._slot.open()

    def _wake(self) -> None:
        self._slot.close()

    def offer(self, frame: RgbdFrame, index: int) -> None:
        """Hand over processed frame ``index`` (never blocks)."""
        if self._slot.put((frame, index)):
            self._stats.count("heads_superseded")

    def _loop(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)
        if self._nice:
            self.niceness = lower_priority(self._nice)
        while not self._stop.is_set():
            item = self._slot.take(timeout_s=0.2)
            if item is None:
                continue
            try:
                self.step(*item)
            except Exception as exc:  # noqa: BLE001 - thread boundary: count, report, go on
                self._stats.count("heads_internal_error")
                log.exception("heads thread failed on frame %d", item[0].stamp_ns)
                self._warn(f"heads: internal error on frame {item[0].stamp_ns}: {exc!r}")

    def step(self, frame: RgbdFrame, index: int) -> Optional[HeadsResult]:
        """Run and publish the heads of one frame; None if they failed for it."""
        t0 = time.perf_counter()
        try:
            result = self._run_heads(frame, index)
        except InputError as exc:
            self._stats.count(f"heads_{exc.reason}")
            self._warn(f"heads skipped frame {frame.stamp_ns}: {exc}")
            return None
        except ModelError as exc:
            self._stats.count("heads_model_error")
            self._warn(f"heads skipped frame {frame.stamp_ns}: {exc}")
            return None
        self._publish(result, frame)
        self._stats.count("heads_processed")
        self._stats.observe("heads_ms", (time.perf_counter() - t0) * 1e3)
        self._stats.observe("heads_age_ms", (self._clock_ns() - frame.stamp_ns) / 1e6)
        return result
