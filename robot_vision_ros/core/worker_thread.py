"""A stoppable daemon thread: the life cycle shared by the node's worker threads."""
from __future__ import annotations

import threading
from typing import Optional


class WorkerThread:
    """Runs :meth:`_loop` on a daemon thread between :meth:`start` and :meth:`stop`.

    Subclasses implement ``_loop`` (returning once ``self._stop`` is set) and may
    override ``_on_start`` (before the thread starts) and ``_wake`` (unblock a
    wait in the loop so ``stop`` does not wait for a timeout).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._stop.clear()
        self._on_start()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _on_start(self) -> None:
        """Hook: prepare before the thread starts."""

    def _wake(self) -> None:
        """Hook: unblock the loop's wait."""

    def _loop(self) -> None:
        raise NotImplementedError
