"""Calibration on the node's own frames (``compression.calibration: live``).

The node runs the uncompressed encoder while :class:`LiveCompression` keeps
the first ``wanted`` preprocessed inputs (``offer``, on the inference thread).
Then one background thread compresses and runs the fidelity guard
(``compress_fn``) while the node keeps publishing with the fp32 model; the
inference thread picks the result up between two frames (``poll``) and swaps
it in. A guard failure leaves the state ``failed`` with the reason, for the
node to report and stop on. ROS-free: the node and tests drive it alike.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

from ..core.errors import ConfigError, VisionError

LOG = logging.getLogger(__name__)

COLLECTING, COMPRESSING, ACTIVE, FAILED = "collecting", "compressing", "active", "failed"
STATES = (COLLECTING, COMPRESSING, ACTIVE, FAILED)

#: ``compress_fn(frames [N, 3, H, W] on the CPU) -> result``; VisionError = failed.
CompressFn = Callable[[torch.Tensor], Any]


class LiveCompression:
    """Collect ``wanted`` encoder inputs, compress them off the inference thread, hand over.

    ``state``: ``collecting`` -> ``compressing`` -> ``active`` (after the
    result was taken by :meth:`poll`) or ``failed`` (``error`` says why).
    Thread-safe: ``offer``/``poll`` run on the inference thread, ``status``
    on any.
    """

    def __init__(self, wanted: int, compress_fn: CompressFn) -> None:
        if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 2:
            raise ConfigError(f"live calibration needs at least 2 frames, got {wanted!r}")
        self.wanted = wanted
        self._compress_fn = compress_fn
        self._lock = threading.Lock()
        self._frames: List[torch.Tensor] = []
        self._state = COLLECTING
        self._result: Any = None
        self._result_ready = False
        self.error = ""
        self._thread: Optional[threading.Thread] = None
        self._paused = 0

    @property
    def state(self) -> str:
        return self._state

    @property
    def collected(self) -> int:
        return len(self._frames) if self._state == COLLECTING else self.wanted

    def status(self) -> str:
        """``collecting N/M``, ``compressing``, ``active`` or ``failed: reason``."""
        with self._lock:
            if self._state == COLLECTING:
                return f"{COLLECTING} {len(self._frames)}/{self.wanted}"
            if self._state == FAILED:
                return f"{FAILED}: {self.error}"
            return self._state

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Frames offered inside the block are not collected (warm-up frames)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def offer(self, x: torch.Tensor) -> None:
        """Keep the preprocessed batch ``x`` ``[B, 3, H, W]`` while collecting."""
        if self._state != COLLECTING or self._paused:
            return
        with self._lock:
            room = self.wanted - len(self._frames)
            self._frames.extend(f[None].detach().float().cpu().clone()
                                for f in x[:room])
            full = len(self._frames) >= self.wanted
            if full:
                self._state = COMPRESSING
        if full:
            self._thread = threading.Thread(target=self._compress, name="vision-compress",
                                            daemon=True)
            self._thread.start()

    def _compress(self) -> None:
        # Built outside inference mode: the collected inference tensors become
        # normal ones, which fine-tuning and calibration may use freely.
        frames = torch.cat(self._frames).clone()
        try:
            result = self._compress_fn(frames)
        except VisionError as exc:
            self._fail(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - thread boundary: report, never crash
            LOG.exception("live compression failed")
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._result, self._result_ready = result, True
            self._frames = []

    def _fail(self, reason: str) -> None:
        LOG.error("live compression failed: %s", reason)
        with self._lock:
            self.error, self._state = reason, FAILED
            self._frames = []

    def poll(self) -> Optional[Any]:
        """The compression result, once, when it is ready (the state becomes ``active``)."""
        if not self._result_ready:
            return None
        with self._lock:
            result, self._result, self._result_ready = self._result, None, False
            self._state = ACTIVE
        return result

    def wait(self, timeout_s: Optional[float] = None) -> bool:
        """Wait for the background compression; True once it is done (or never started)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return self._state != COLLECTING


def compression_status(pipeline: Any) -> Dict[str, str]:
    """Diagnostics key/values of a Perception- or EncoderPipeline's compression (empty: none).

    ``compression_state`` (``collecting N/M``, ``compressing``, ``active``,
    ``failed: ...``), ``compression_fidelity`` (+ metric) once measured, and
    the head figures ``compression_depth_absrel`` / ``compression_box_agreement``.
    """
    values: Dict[str, str] = {}
    # The encoder stage: the EncoderPipeline itself, or the PerceptionPipeline's.
    stage = pipeline if hasattr(pipeline, "live") else getattr(pipeline, "encoder", None)
    live = getattr(stage, "live", None)
    report = getattr(stage, "compression", None) or {}
    if live is not None:
        values["compression_state"] = live.status()
    elif report:
        values["compression_state"] = ACTIVE
    guard = report.get("guard")
    if guard:
        values["compression_fidelity"] = f"{guard['value']:.4f}"
        values["compression_fidelity_metric"] = guard["metric"]
    heads = getattr(pipeline, "head_compression", None) or {}
    if "depth" in heads:
        values["compression_depth_absrel"] = f"{heads['depth']['absrel']:.4f}"
    if "detection" in heads:
        values["compression_box_agreement"] = f"{heads['detection']['box_f1']:.4f}"
    return values
