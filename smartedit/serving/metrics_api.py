"""The Python backend's metrics API, made safe to update from several threads of one model.

The API is not thread-safe: updates from two threads of one model at once crashed tritonserver 2.51
(SIGSEGV in libtriton_python.so). Every update takes this process's one lock.
"""

from __future__ import annotations

import threading

UPDATE_LOCK = threading.Lock()


class Serialized:
    """A metric whose updates take the process's update lock."""

    def __init__(self, metric):
        self._metric = metric

    def increment(self, value) -> None:
        with UPDATE_LOCK:
            self._metric.increment(value)

    def set(self, value) -> None:
        with UPDATE_LOCK:
            self._metric.set(value)

    def observe(self, value) -> None:
        with UPDATE_LOCK:
            self._metric.observe(value)
