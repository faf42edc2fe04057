"""Every request an entry point answers, counted by how it ended and why: ``smartedit_requests_total``.

Triton counts an ensemble's failures as ``nv_inference_request_failure{reason="OTHER"}`` and a
decoupled stream's not at all; this says what they were. Labels:

- ``entry``: ``inpaint`` (the unary ensemble: its preprocess, denoising and postprocess steps count
  the requests that end there), ``inpaint_stream``, ``segment``;
- ``pipeline``: the pipeline that served it (``smartedit export --model NAME=PATH``; empty for ``segment``);
- ``outcome``: ``ok``; ``invalid`` (the request is wrong: a client error); ``refused`` (nothing was
  done: at capacity, shutting down); ``cancelled`` (its deadline passed, its client left, the drain
  timed out); ``interrupted`` (a model process died under it: sending it again may succeed);
  ``failed`` (a fault on the server's side);
- ``reason``: short: the field for ``invalid`` (``image``, ``num_inference_steps``, ...);
  ``at_capacity``, ``shutting_down`` (refused while draining, or stopped by the drain's timeout),
  ``model_process_died``, ``deadline``, ``client_cancelled``; the stage for ``failed`` (``preprocess``,
  ``prepare``, ``denoise``, ``postprocess``, ``stream``, ``segment``).

A component of the ensemble that fails on its own (text encoder, VAE) ends the request before any
of these steps can count it: Triton's ``nv_inference_request_failure`` of that model does.
Imported only inside the Python backend stub.
"""

from __future__ import annotations

import threading

import triton_python_backend_utils as pb_utils

from smartedit.serving.metrics_api import Serialized

NAME = "smartedit_requests_total"
OUTCOMES = ("ok", "invalid", "refused", "cancelled", "interrupted", "failed")


def outcome_of(code: str, reason: str) -> str:
    """The outcome of a request that ended with an error of ``code`` (a TritonError or gRPC code name) for
    ``reason``."""
    if code == "CANCELLED":
        return "cancelled"
    if code == "UNAVAILABLE":
        return "interrupted" if reason == "model_process_died" else "refused"
    if code in ("INVALID_ARG", "INVALID_ARGUMENT"):
        return "invalid"
    return "failed"


class RequestCounter:
    """The counter of one entry point, in this model's process."""

    def __init__(self, entry: str, pipeline: str = ""):
        self._entry = entry
        self._pipeline = pipeline
        self._family = pb_utils.MetricFamily(NAME, "Requests answered by SmartEdit's entry points, by outcome and "
                                                   "reason (smartedit.serving.request_metrics).",
                                             pb_utils.MetricFamily.COUNTER)
        self._metrics: dict[tuple[str, str], Serialized] = {}
        self._lock = threading.Lock()

    def count(self, outcome: str, reason: str = "") -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        key = (outcome, reason)
        with self._lock:
            metric = self._metrics.get(key)
            if metric is None:
                metric = self._metrics[key] = Serialized(self._family.Metric(labels={
                    "entry": self._entry, "pipeline": self._pipeline, "outcome": outcome, "reason": reason}))
        metric.increment(1)

    def close(self) -> None:
        """At unload, while this model process can still reach Triton: each Metric, then the family (the
        Python backend wants them in that order; a family left to the interpreter's exit segfaults the
        exiting process in Triton 2.51). Nothing may count after this."""
        with self._lock:
            self._metrics.clear()
            self._family = None
