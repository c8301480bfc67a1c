"""The inference worker: takes the newest frame, processes it, hands it to publishers.

Runs in its own thread so that camera callbacks never wait for a model; the
executor keeps receiving (and superseding) frames meanwhile.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from .errors import InputError, ModelError
from .frames import RgbdFrame
from .scheduler import FrameSync, PendingFrame
from .stats import FrameStats
from .worker_thread import WorkerThread

log = logging.getLogger(__name__)

Decode = Callable[[PendingFrame], RgbdFrame]
Process = Callable[[RgbdFrame], Any]
Publish = Callable[[Any, RgbdFrame], None]
Warn = Callable[[str], None]


class InferenceWorker(WorkerThread):
    """Thread: ``sync.take()`` -> ``decode`` -> ``process`` -> ``publish``, counting everything.

    Bad input (InputError) and model failures (ModelError, e.g. CUDA out of
    memory) drop that frame, are counted by reason and reported through
    ``warn``; the worker keeps going.
    """

    def __init__(self, sync: FrameSync, decode: Decode, process: Process, publish: Publish,
                 stats: FrameStats, warn: Warn, clock_ns: Callable[[], int]) -> None:
        self._sync = sync
        self._decode = decode
        self._process = process
        self._publish = publish
        self._stats = stats
        self._warn = warn
        self._clock_ns = clock_ns
        super().__init__("vision-inference")

    def _wake(self) -> None:
        self._sync.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            pending = self._sync.take(timeout_s=0.2)
            if pending is None:
                continue
            try:
                self.step(pending)
            except Exception as exc:  # noqa: BLE001 - thread boundary: count, report, go on
                self._stats.skip("internal_error")
                log.exception("inference worker failed on frame %d", pending.stamp_ns)
                self._warn(f"internal error on frame {pending.stamp_ns}: {exc!r}")

    def step(self, pending: PendingFrame) -> Optional[Any]:
        """Process one pending frame; returns the result or None if it was dropped."""
        t0 = time.perf_counter()
        try:
            frame = self._decode(pending)
            result = self._process(frame)
        except InputError as exc:
            self._stats.skip(exc.reason)
            self._warn(f"dropped frame {pending.stamp_ns}: {exc}")
            return None
        except ModelError as exc:
            self._stats.skip("model_error")
            self._warn(f"dropped frame {pending.stamp_ns}: {exc}")
            return None
        if pending.depth_stamp_ns is not None:
            self._stats.observe("skew_ms", abs(pending.depth_stamp_ns - pending.stamp_ns) / 1e6)
        self._publish(result, frame)
        self._stats.observe("processing_ms", (time.perf_counter() - t0) * 1e3)
        self._stats.observe("age_ms", (self._clock_ns() - pending.stamp_ns) / 1e6)
        self._stats.count("processed")
        return result
