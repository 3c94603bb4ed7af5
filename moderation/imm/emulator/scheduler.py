"""A thread that runs callables at their due times, one at a time, in due-time order."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, name: str) -> None:
        self.name = name
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call_later(self, delay: float, job: Callable[[], None]) -> None:
        """Run job after `delay` seconds; jobs due at the same time run in the order given."""
        with self._wakeup:
            due = time.monotonic() + max(0.0, delay)
            heapq.heappush(self._heap, (due, next(self._order), job))
            self._wakeup.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the job in hand, if any; jobs not yet due are dropped."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _next_job(self) -> Callable[[], None] | None:
        with self._wakeup:
            while not self._stopping:
                wait = self._heap[0][0] - time.monotonic() if self._heap else None
                if wait is not None and wait <= 0:
                    return heapq.heappop(self._heap)[2]
                self._wakeup.wait(wait)
            return None

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                job()
            except Exception:
                logger.exception("%s: a scheduled job failed", self.name)
