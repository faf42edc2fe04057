"""Custom Prometheus metrics of the ``scheduler`` model, through the Python backend's metrics API.

Triton serves them on its metrics port next to its own ``nv_*`` metrics. What Triton already
measures per model (queue time, pending requests, executions) is not repeated here; these are
what only the denoising loop knows. Labels: ``model`` and ``version``; the gauges that describe
one loop instance also carry ``instance``. Imported only inside the Python backend stub.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import triton_python_backend_utils as pb_utils

PREFIX = "smartedit_scheduler_"
# Seconds: a tiny CPU model takes ~0.1 s per edit, SD 1.5 at 512 px on a GPU ~1-3 s, on a CPU minutes.
DURATION_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
OUTCOMES = ("ok", "failed", "cancelled")

NAMES = {
    "steps": PREFIX + "denoise_steps_total",
    "steps_per_second": PREFIX + "steps_per_second",
    "active": PREFIX + "active_requests",
    "queue": PREFIX + "unet_queue_depth",
    "duration": PREFIX + "denoise_duration_seconds",
    "edits": PREFIX + "requests_total",
}


class SchedulerMetrics:
    """The families are registered once per process; Triton merges same-named ones across instances."""

    def __init__(self, model: str, version: str, instance: str):
        model_labels = {"model": model, "version": version}
        instance_labels = {**model_labels, "instance": instance}
        self._families = [
            steps := pb_utils.MetricFamily(NAMES["steps"], "Denoising steps run (UNet calls per edit).",
                                           pb_utils.MetricFamily.COUNTER),
            rate := pb_utils.MetricFamily(NAMES["steps_per_second"],
                                          "Denoising steps per second of the last edit this loop instance finished.",
                                          pb_utils.MetricFamily.GAUGE),
            active := pb_utils.MetricFamily(NAMES["active"], "Edits this loop instance is denoising now.",
                                            pb_utils.MetricFamily.GAUGE),
            queue := pb_utils.MetricFamily(NAMES["queue"],
                                           "UNet calls this loop instance has sent that have not returned yet "
                                           "(waiting in the UNet's batcher or running).",
                                           pb_utils.MetricFamily.GAUGE),
            duration := pb_utils.MetricFamily(NAMES["duration"], "Wall time of one edit's denoising loop.",
                                              pb_utils.MetricFamily.HISTOGRAM),
            edits := pb_utils.MetricFamily(NAMES["edits"], "Edits the loop ended, by outcome.",
                                           pb_utils.MetricFamily.COUNTER),
        ]
        self.steps = steps.Metric(labels=model_labels)
        self.steps_per_second = rate.Metric(labels=instance_labels)
        self.active = active.Metric(labels=instance_labels)
        self.queue_depth = queue.Metric(labels=instance_labels)
        self.duration = duration.Metric(labels=model_labels, buckets=DURATION_BUCKETS)
        self.outcomes = {outcome: edits.Metric(labels={**model_labels, "outcome": outcome}) for outcome in OUTCOMES}

    @contextmanager
    def unet_call(self, record: "EditRecord"):
        """One denoising step's UNet call of the edit ``record`` describes."""
        self.queue_depth.increment(1)
        try:
            yield
        finally:
            self.queue_depth.increment(-1)
        record.steps += 1

    @contextmanager
    def edit(self):
        """Counts one edit while it denoises; the body may set ``outcome`` to "cancelled"."""
        self.active.increment(1)
        started = time.perf_counter()
        record = EditRecord()
        try:
            yield record
        except BaseException:
            record.outcome = "failed"
            raise
        finally:
            self.active.increment(-1)
            elapsed = time.perf_counter() - started
            self.steps.increment(record.steps)
            self.duration.observe(elapsed)
            self.outcomes[record.outcome].increment(1)
            if record.outcome == "ok" and elapsed > 0:
                self.steps_per_second.set(record.steps / elapsed)


class EditRecord:
    """What the metrics learn of one edit as it runs."""

    def __init__(self):
        self.steps = 0
        self.outcome = "ok"
