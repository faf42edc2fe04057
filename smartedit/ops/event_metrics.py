"""The supervisor's events and the drain, as Prometheus metrics on Triton's metrics port.

``smartedit serve`` is not a Triton model and cannot publish metrics itself; it counts its events in
the server's shared state (``ServerState.count_event``), and one Python model (``server_info``, the
lightest) publishes them every couple of seconds:

- ``smartedit_ops_events_total{event, model}``: ``model_process_replaced`` (per model),
  ``server_restarted``, ``drain``;
- ``smartedit_draining``: 1 from the start of a drain until tritonserver stops;
- ``smartedit_requests_in_flight``: requests admitted and not yet answered (the drain waits for 0).

Imported only inside the Python backend stub.
"""

from __future__ import annotations

import threading

import triton_python_backend_utils as pb_utils

from smartedit.serving.metrics_api import Serialized
from smartedit.ops.server_state import ServerState

PUBLISH_EVERY_S = 2.0


class EventMetrics:
    def __init__(self, state: ServerState, every_s: float = PUBLISH_EVERY_S):
        family = pb_utils.MetricFamily
        self._state = state
        self._events = family("smartedit_ops_events_total", "Events of smartedit serve: model processes replaced, "
                                                             "tritonserver restarts, drains.", family.COUNTER)
        draining = family("smartedit_draining", "1 while the server drains before it stops.", family.GAUGE)
        in_flight = family("smartedit_requests_in_flight", "Requests admitted and not yet answered.", family.GAUGE)
        self._families = [self._events, draining, in_flight]
        self._draining = Serialized(draining.Metric(labels={}))
        self._in_flight = Serialized(in_flight.Metric(labels={}))
        self._counters: dict[str, Serialized] = {}
        self._published: dict[str, int] = {}
        self._stop = threading.Event()
        self._every_s = every_s
        self._thread = threading.Thread(target=self._run, name="event-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.publish()

    def publish(self) -> None:
        for key, count in self._state.events().items():
            grown = count - self._published.get(key, 0)
            if grown <= 0:
                continue
            counter = self._counters.get(key)
            if counter is None:
                event, _, model = key.partition(" ")
                counter = self._counters[key] = Serialized(self._events.Metric(labels={"event": event, "model": model}))
            counter.increment(grown)
            self._published[key] = count
        self._draining.set(1 if self._state.drain() is not None else 0)
        self._in_flight.set(self._state.in_flight())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        # The Python backend wants each Metric released before its MetricFamily; both now, while this
        # model process can still reach Triton (left to its exit, they segfault it: Triton 2.51).
        self._counters.clear()
        del self._draining, self._in_flight
        self._families.clear()
        self._events = None
