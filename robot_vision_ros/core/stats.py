"""Frame accounting: counters by reason, latency percentiles, rates.

Thread-safe: the executor thread counts received frames while the worker
thread counts processed ones. A snapshot is a plain dict for diagnostics
and the shutdown log.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict, deque
from typing import Deque, Dict, Iterable, Optional, Tuple

import numpy as np


class LatencyWindow:
    """The last ``size`` samples (milliseconds) with percentiles."""

    def __init__(self, size: int = 300) -> None:
        self._samples: Deque[float] = deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._samples.append(float(value_ms))

    def percentiles(self, qs: Iterable[float] = (50, 99)) -> Dict[str, float]:
        """``{'p50': ..., 'p99': ...}``; NaN when empty."""
        qs = tuple(qs)
        if not self._samples:
            return {f"p{q:g}": float("nan") for q in qs}
        values = np.percentile(np.fromiter(self._samples, float), qs)
        return {f"p{q:g}": float(v) for q, v in zip(qs, values)}

    def __len__(self) -> int:
        return len(self._samples)


class RateMeter:
    """Events per second over a sliding window of ``window_s`` seconds."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._times: Deque[float] = deque()

    def tick(self, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate_hz(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (len(self._times) - 1) / span if span > 0 else 0.0


class FrameStats:
    """Counts of received/processed/skipped frames and latency windows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.skipped: Counter = Counter()
        self.latency: Dict[str, LatencyWindow] = defaultdict(LatencyWindow)
        for name in ("processing_ms", "age_ms", "skew_ms"):
            self.latency[name] = LatencyWindow()
        self.rates = {"input": RateMeter(), "output": RateMeter()}
        self.last_input_time: Optional[float] = None

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n
            if key == "received":
                self.rates["input"].tick()
                self.last_input_time = time.monotonic()
            elif key == "processed":
                self.rates["output"].tick()

    def skip(self, reason: str, n: int = 1) -> None:
        """Count a frame that was not processed, by reason."""
        with self._lock:
            self.skipped[reason] += n

    def observe(self, name: str, value_ms: float) -> None:
        """Add a sample to window ``name`` (created on first use)."""
        with self._lock:
            self.latency[name].add(value_ms)

    def seconds_since_input(self) -> Optional[float]:
        with self._lock:
            if self.last_input_time is None:
                return None
            return time.monotonic() - self.last_input_time

    def snapshot(self) -> Dict[str, float]:
        """Flat ``{name: value}`` for diagnostics and logs."""
        with self._lock:
            out: Dict[str, float] = {k: float(v) for k, v in self.counts.items()}
            out["skipped_total"] = float(sum(self.skipped.values()))
            out.update({f"skipped_{k}": float(v) for k, v in self.skipped.items()})
            for name, window in self.latency.items():
                for q, v in window.percentiles().items():
                    out[f"{name}_{q}"] = v
            out["input_rate_hz"] = self.rates["input"].rate_hz()
            out["output_rate_hz"] = self.rates["output"].rate_hz()
        return out

    def summary_items(self) -> Tuple[Tuple[str, str], ...]:
        """Sorted ``(key, formatted value)`` pairs."""
        return tuple((k, f"{v:.3f}" if v != int(v) else f"{int(v)}")
                     for k, v in sorted(self.snapshot().items()) if v == v)
