"""Custom Prometheus metrics of the denoising loops, through the Python backend's metrics API.

Triton serves them on its metrics port next to its own ``nv_*`` metrics. What Triton already
measures per model (executions, its own queues) is not repeated here; these are what only the loop
knows. Both engines report the same families: the batched engine (model ``denoise_engine``) through
``EngineReporter``, the per-request loop (model ``scheduler``) through ``SchedulerMetrics``' context
managers. Labels: ``model`` and ``version``; gauges that describe one loop instance also carry
``instance``. Imported only inside the Python backend stub.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager

import triton_python_backend_utils as pb_utils

from smartedit.engine.core import EngineMetrics
from smartedit.serving.metrics_api import Serialized

PREFIX = "smartedit_scheduler_"
# Seconds: a tiny CPU model takes ~0.1 s per edit, SD 1.5 at 512 px on a GPU ~1-3 s, on a CPU minutes.
DURATION_BUCKETS = [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
QUEUE_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
ROWS_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
OUTCOMES = ("ok", "failed", "cancelled", "refused", "interrupted")
RATE_WINDOW_S = 10.0

NAMES = {
    "steps": PREFIX + "denoise_steps_total",
    "steps_per_second": PREFIX + "steps_per_second",
    "active": PREFIX + "active_requests",
    "queued": PREFIX + "queued_requests",
    "queue": PREFIX + "unet_queue_depth",
    "rows": PREFIX + "unet_batch_rows",
    "wait": PREFIX + "queue_wait_seconds",
    "duration": PREFIX + "denoise_duration_seconds",
    "edits": PREFIX + "requests_total",
    "lanes": PREFIX + "unet_lanes",
    "fixed": PREFIX + "unet_call_fixed_seconds",
    "per_row": PREFIX + "unet_call_row_seconds",
    "host": PREFIX + "host_seconds_per_edit_step",
}


class SchedulerMetrics:
    """The families are registered once per process; Triton merges same-named ones across models."""

    def __init__(self, model: str, version: str, instance: str):
        model_labels = {"model": model, "version": version}
        instance_labels = {**model_labels, "instance": instance}
        family = pb_utils.MetricFamily
        self._families = [
            steps := family(NAMES["steps"], "Denoising steps run (one per edit per UNet call), counted as they run.",
                            family.COUNTER),
            rate := family(NAMES["steps_per_second"],
                           f"Denoising steps per second of this loop instance over the last {RATE_WINDOW_S:.0f} s, "
                           "0 when idle (per-request loop: of the last edit it finished).", family.GAUGE),
            active := family(NAMES["active"], "Edits this loop instance is denoising now.", family.GAUGE),
            queued := family(NAMES["queued"], "Edits admitted by this loop instance and waiting for an active slot.",
                             family.GAUGE),
            queue := family(NAMES["queue"], "UNet calls this loop instance has sent that have not returned yet "
                                            "(waiting in the UNet's batcher or running).", family.GAUGE),
            rows := family(NAMES["rows"], "Rows (edits x 2 under guidance) per UNet call.", family.HISTOGRAM),
            wait := family(NAMES["wait"], "Time an admitted edit waited for an active slot (the autoscaling signal).",
                           family.HISTOGRAM),
            duration := family(NAMES["duration"], "Wall time of one edit's denoising loop.", family.HISTOGRAM),
            edits := family(NAMES["edits"], "Edits the loop ended or refused, by outcome.", family.COUNTER),
            lanes := family(NAMES["lanes"], "Lanes the batched engine's planner has open (smartedit.engine.planner).",
                            family.GAUGE),
            fixed := family(NAMES["fixed"], "Estimated fixed seconds of one UNet call, per latent size (measured: "
                                            "call time = fixed + per row x rows).", family.GAUGE),
            per_row := family(NAMES["per_row"], "Estimated seconds per row of a UNet call, per latent size.",
                              family.GAUGE),
            host := family(NAMES["host"], "Estimated seconds of the engine's own work per edit per step.",
                           family.GAUGE),
        ]
        self._cost_families = {"fixed": fixed, "per_row": per_row}
        self._instance_labels = instance_labels
        self.steps = Serialized(steps.Metric(labels=model_labels))
        self.steps_per_second = Serialized(rate.Metric(labels=instance_labels))
        self.active = Serialized(active.Metric(labels=instance_labels))
        self.queued = Serialized(queued.Metric(labels=instance_labels))
        self.queue_depth = Serialized(queue.Metric(labels=instance_labels))
        self.rows = Serialized(rows.Metric(labels=model_labels, buckets=ROWS_BUCKETS))
        self.queue_wait = Serialized(wait.Metric(labels=model_labels, buckets=QUEUE_BUCKETS))
        self.duration = Serialized(duration.Metric(labels=model_labels, buckets=DURATION_BUCKETS))
        self.outcomes = {outcome: Serialized(edits.Metric(labels={**model_labels, "outcome": outcome}))
                         for outcome in OUTCOMES}
        self.lanes = Serialized(lanes.Metric(labels=instance_labels))
        self.host_per_edit_step = Serialized(host.Metric(labels=instance_labels))
        self._cost_gauges: dict = {}

    def cost_gauge(self, which: str, latent_size: tuple[int, ...]):
        """The ``fixed`` or ``per_row`` gauge of one latent size ("64x64"), made on first use."""
        key = (which, latent_size)
        if key not in self._cost_gauges:
            labels = {**self._instance_labels, "latent": "x".join(map(str, latent_size))}
            self._cost_gauges[key] = Serialized(self._cost_families[which].Metric(labels=labels))
        return self._cost_gauges[key]

    def release(self) -> None:
        """At unload, while this model process can still reach Triton: every Metric, then the families.
        Left to the interpreter's exit, a family's release runs after the stub has let go of its shared
        memory and segfaults the exiting process (Triton 2.51). Nothing may record after this."""
        families = self._families
        self.__dict__.clear()
        families.clear()

    # --- the per-request loop ----------------------------------------------------------------------

    @contextmanager
    def unet_call(self, record: "EditRecord", rows: int):
        """One denoising step's UNet call of the edit ``record`` describes."""
        self.queue_depth.increment(1)
        try:
            yield
        finally:
            self.queue_depth.increment(-1)
        self.rows.observe(rows)
        self.steps.increment(1)
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
            self.duration.observe(elapsed)
            self.outcomes[record.outcome].increment(1)
            if record.outcome == "ok" and elapsed > 0:
                self.steps_per_second.set(record.steps / elapsed)


class EditRecord:
    """What the metrics learn of one edit as it runs."""

    def __init__(self):
        self.steps = 0
        self.outcome = "ok"


class EngineReporter(EngineMetrics):
    """The batched engine's hooks, onto the same families. Each metric update is an IPC message to
    the server, so gauges are only set when their value changes."""

    def __init__(self, metrics: SchedulerMetrics):
        self._metrics = metrics
        self._load = None
        self._recent_steps: deque[tuple[float, int]] = deque()
        self._rate_lock = threading.Lock()  # load() comes from execute's thread too

    def refused(self) -> None:
        self._metrics.outcomes["refused"].increment(1)

    def load(self, active: int, queued: int) -> None:
        if (active, queued) != self._load:
            self._load = (active, queued)
            self._metrics.active.set(active)
            self._metrics.queued.set(queued)
            if active == 0:  # idle: the rate is zero, not the last busy window's
                with self._rate_lock:
                    self._recent_steps.clear()
                self._metrics.steps_per_second.set(0)

    def joined(self, queue_wait_s: float) -> None:
        self._metrics.queue_wait.observe(queue_wait_s)

    def unet_call(self, rows: int) -> None:
        self._metrics.rows.observe(rows)

    def stepped(self, edits: int) -> None:
        if edits:
            self._metrics.steps.increment(edits)
        with self._rate_lock:
            if self._load and self._load[0] == 0:
                return  # the iteration's last edits just ended: idle, and the rate stays 0
            now = time.monotonic()
            self._recent_steps.append((now, edits))
            while self._recent_steps and self._recent_steps[0][0] < now - RATE_WINDOW_S:
                self._recent_steps.popleft()
            span = max(now - self._recent_steps[0][0], 1.0)
            rate = sum(n for _, n in self._recent_steps) / span
        self._metrics.steps_per_second.set(rate)

    def plan(self, lanes: int, fits: dict, host_s_per_edit: float) -> None:
        metrics = self._metrics
        metrics.lanes.set(lanes)
        metrics.host_per_edit_step.set(host_s_per_edit)
        for size, fit in fits.items():
            metrics.cost_gauge("fixed", size).set(fit.a)
            metrics.cost_gauge("per_row", size).set(fit.b)

    def ended(self, outcome: str, duration_s: float) -> None:
        self._metrics.outcomes[outcome].increment(1)
        self._metrics.duration.observe(duration_s)
