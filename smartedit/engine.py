"""The batched denoising engine: one worker steps every active edit of its instance together.

    submit() ─► admission (bounded) ─► prepare pool ─► ready queue ─► worker ─► outbox ─► sinks
                 refuses past the       start_denoising,              each iteration:
                 bounds at once         VAE-encodes the init           admit ready edits, drop stopped ones,
                                        image (strength < 1)           one UNet call per latent size (chunked
                                                                       to the UNet's max rows), advance each

This is iteration-level batching (what LLM servers call continuous batching, here over denoising
steps): a new edit joins at the next iteration and never waits for others to finish; a finished,
failed or cancelled edit leaves at once and frees its rows. Edits keep their own sampler, step
count, guidance, strength and timestep: the UNet takes one timestep per row, and everything else
happens per edit in ``DenoiseState.advance``. Rows of one edit never change with its company, so
an edit gives the same result whatever else is in the batch (provided the UNet is batch-invariant;
ONNX Runtime on CPU is bit-for-bit).

Nothing here knows Triton: the UNet is a function, answers go to an ``EditSink``. The ``scheduler``
Python models plug in BLS calls and response senders; the tests plug in ONNX Runtime directly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from smartedit.denoise import DenoiseState
from smartedit.structured_log import log_event

# (sample [rows, C, h, w], timestep [rows], encoder_hidden_states [rows, L, D]) -> noise_pred [rows, c, h, w]
BatchedUNet = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

OK, FAILED, CANCELLED = "ok", "failed", "cancelled"


class AtCapacity(Exception):
    """The engine holds as many edits as its limits allow; the request is refused before any work."""


@dataclass(frozen=True)
class EngineLimits:
    """How much one engine takes on.

    Attributes:
        max_active_edits: edits denoising at once; each needs 1 UNet row per step, 2 under guidance.
        max_queued_edits: admitted edits waiting for an active slot; past this, requests are refused.
        max_unet_rows: rows per UNet call (the UNet's max batch); larger iterations make several calls.
    """

    max_active_edits: int
    max_queued_edits: int
    max_unet_rows: int

    def __post_init__(self):
        if self.max_active_edits < 1:
            raise ValueError(f"max_active_edits must be >= 1, got {self.max_active_edits}")
        if self.max_queued_edits < 0:
            raise ValueError(f"max_queued_edits must be >= 0, got {self.max_queued_edits}")
        if self.max_unet_rows < 2:
            raise ValueError(f"max_unet_rows must be >= 2 (one edit under guidance), got {self.max_unet_rows}")


class EditSink(Protocol):
    """Where one edit's answers go. Called from the engine's outbox thread, in order, never concurrently."""

    def progress(self, step: int, total_steps: int, preview_latents: torch.Tensor | None) -> None: ...

    def finished(self, state: DenoiseState) -> None: ...

    def failed(self, message: str) -> None: ...

    def cancelled(self, message: str) -> None: ...


class EngineMetrics:
    """What the engine reports as it runs; this base class ignores everything (tests, benchmarks)."""

    def refused(self) -> None: ...

    def load(self, active: int, queued: int) -> None: ...

    def joined(self, queue_wait_s: float) -> None: ...

    def unet_call(self, rows: int) -> None: ...

    def stepped(self, edits: int) -> None: ...

    def ended(self, outcome: str, duration_s: float) -> None: ...


@dataclass
class EditRequest:
    """One edit handed to the engine.

    Attributes:
        request_id: the client's id, carried by every log line of the edit.
        prepare: builds the edit's ``DenoiseState`` (stages 4-9); runs on the prepare pool.
        sink: receives the edit's progress and its one final answer.
        deadline: ``time.time()`` past which the caller has given up; None for no deadline.
        cancelled: whether the caller has gone (checked between steps); never, by default.
        preview_every: None: no progress messages; 0: progress after every step; n > 0: progress after
            every step and the preview latents every n steps and at the last.
        log_fields: extra fields of the edit's log line (sampler, steps, ...).
    """

    request_id: str
    prepare: Callable[[], DenoiseState]
    sink: EditSink
    deadline: float | None = None
    cancelled: Callable[[], bool] = lambda: False
    preview_every: int | None = None
    log_fields: dict = field(default_factory=dict)


@dataclass
class _Edit:
    request: EditRequest
    submitted: float  # monotonic
    state: DenoiseState | None = None
    started: float | None = None  # monotonic, when it joined the active set

    @property
    def rows(self) -> int:
        return self.state.rows

    @property
    def latent_size(self) -> tuple[int, ...]:
        return tuple(self.state.latents.shape[-2:])

    def stop_reason(self, now: float) -> str | None:
        if self.request.deadline is not None and now >= self.request.deadline:
            return "the caller's deadline passed"
        if self.request.cancelled():
            return "the caller cancelled it"
        return None

    def wants_preview(self) -> bool:
        every = self.request.preview_every
        if not every:
            return False
        return self.state.step_index % every == 0 or self.state.done


def plan_unet_calls(edits: list, max_rows: int) -> list[list]:
    """The UNet calls of one iteration: edits grouped by latent size, each group cut into chunks of at
    most ``max_rows`` rows (an edit's rows are never split), in admission order."""
    groups: dict[tuple[int, ...], list] = {}
    for edit in edits:
        groups.setdefault(edit.latent_size, []).append(edit)
    calls = []
    for members in groups.values():
        chunk, rows = [], 0
        for edit in members:
            if chunk and rows + edit.rows > max_rows:
                calls.append(chunk)
                chunk, rows = [], 0
            chunk.append(edit)
            rows += edit.rows
        calls.append(chunk)
    return calls


class DenoiseEngine:
    """Runs admitted edits to the end, all active ones stepping in shared UNet calls.

    Args:
        unet: the batched UNet call (a BLS call to the ``unet`` model when served).
        limits: active/queued bounds and the UNet's max rows.
        logger: where each edit's one ``denoise`` line goes (JSON fields: request id, outcome, steps...).
        metrics: counters and gauges to keep up to date.
        prepare_workers: threads that build edits' states (they make BLS calls when strength < 1).
    """

    def __init__(self, unet: BatchedUNet, limits: EngineLimits, *, logger: logging.Logger | None = None,
                 metrics: EngineMetrics | None = None, prepare_workers: int = 2):
        self.limits = limits
        self._unet = unet
        self._log = logger or logging.getLogger("smartedit.engine")
        self._metrics = metrics or EngineMetrics()
        self._lock = threading.Condition()
        self._preparing = 0
        self._ready: deque[_Edit] = deque()
        self._active: list[_Edit] = []
        self._closing = False
        self._prepare_pool = ThreadPoolExecutor(prepare_workers, thread_name_prefix="engine-prepare")
        # Answers (responses over IPC, PNG previews) leave from their own thread, so that the worker
        # goes straight on to the next UNet call.
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox_thread = threading.Thread(target=self._deliver, name="engine-outbox", daemon=True)
        self._worker = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._outbox_thread.start()
        self._worker.start()

    # --- admission -------------------------------------------------------------------------------

    def load(self) -> tuple[int, int]:
        """(active, queued) edits now; queued counts those still being prepared."""
        with self._lock:
            return len(self._active), self._preparing + len(self._ready)

    def submit(self, request: EditRequest) -> None:
        """Admit ``request`` or refuse it at once.

        Raises:
            AtCapacity: the engine already holds ``max_active_edits + max_queued_edits`` edits.
            RuntimeError: the engine is shutting down.
        """
        limits = self.limits
        with self._lock:
            if self._closing:
                raise RuntimeError("the denoising engine is shutting down")
            active, queued = len(self._active), self._preparing + len(self._ready)
            if active + queued >= limits.max_active_edits + limits.max_queued_edits:
                self._metrics.refused()
                raise AtCapacity(
                    f"server at capacity: {active} edits denoising and {queued} waiting on this loop instance "
                    f"(limits {limits.max_active_edits} + {limits.max_queued_edits}); retry later")
            self._preparing += 1
            self._metrics.load(active, queued + 1)
        edit = _Edit(request, submitted=time.monotonic())
        self._prepare_pool.submit(self._prepare, edit)

    def _prepare(self, edit: _Edit) -> None:
        try:
            edit.state = edit.request.prepare()
        except Exception as error:  # a bad edit fails alone; the request already passed validation
            with self._lock:
                self._preparing -= 1
                self._lock.notify()
            self._end(edit, FAILED, f"could not start denoising: {error}", exc_info=True)
            return
        with self._lock:
            self._preparing -= 1
            self._ready.append(edit)
            self._lock.notify()

    # --- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._active and not self._ready:
                    if self._closing and not self._preparing:
                        return
                    self._lock.wait()
                gone = self._drop_stopped_ready_locked()
                joining = self._take_ready_locked()
                self._metrics.load(len(self._active), self._preparing + len(self._ready))
            for edit, reason in gone:
                self._end(edit, CANCELLED, f"stopped before its first step: {reason}")
            now = time.monotonic()
            for edit in joining:
                edit.started = now
                self._metrics.joined(now - edit.submitted)
            if self._active:
                self._iterate()

    def _drop_stopped_ready_locked(self) -> list[tuple[_Edit, str]]:
        # Edits whose caller left while they queued give their place back before they cost a step.
        now, gone, kept = time.time(), [], deque()
        for edit in self._ready:
            reason = edit.stop_reason(now)
            if reason is None:
                kept.append(edit)
            else:
                gone.append((edit, reason))
        self._ready = kept
        return gone

    def _take_ready_locked(self) -> list[_Edit]:
        joining = []
        while self._ready and len(self._active) < self.limits.max_active_edits:
            edit = self._ready.popleft()
            self._active.append(edit)
            joining.append(edit)
        return joining

    def _iterate(self) -> None:
        """One denoising step of every active edit."""
        now = time.time()
        stepping = []
        for edit in list(self._active):
            reason = edit.stop_reason(now)
            if reason is None:
                stepping.append(edit)
            else:
                self._leave(edit, CANCELLED, f"stopped after {edit.state.step_index} of "
                                             f"{edit.state.total_steps} steps: {reason}")
        for chunk in plan_unet_calls(stepping, self.limits.max_unet_rows):
            self._step_chunk(chunk)
        self._metrics.stepped(len(stepping))

    def _step_chunk(self, chunk: list[_Edit]) -> None:
        inputs = [edit.state.unet_inputs() for edit in chunk]
        sample = torch.cat([i[0] for i in inputs]).numpy()
        timestep = torch.cat([i[1] for i in inputs]).numpy()
        hidden = torch.cat([i[2] for i in inputs]).numpy()
        self._metrics.unet_call(sample.shape[0])
        try:
            noise_pred = self._unet(sample, timestep, hidden)
        except Exception as error:  # the call's edits fail; other chunks go on
            for edit in chunk:
                self._leave(edit, FAILED, f"the UNet call failed: {error}")
            return
        offset = 0
        for edit in chunk:
            rows = torch.from_numpy(noise_pred[offset:offset + edit.rows])
            offset += edit.rows
            try:
                edit.state.advance(rows)
            except Exception as error:
                self._leave(edit, FAILED, f"step {edit.state.step_index} failed: {error}", exc_info=True)
                continue
            state = edit.state
            if edit.request.preview_every is not None:
                preview = state.preview_latents().clone() if edit.wants_preview() else None
                self._outbox.put((edit.request.sink.progress, (state.step_index, state.total_steps, preview)))
            if state.done:
                self._leave(edit, OK)

    def _leave(self, edit: _Edit, outcome: str, message: str = "", exc_info: bool = False) -> None:
        with self._lock:
            self._active.remove(edit)
            # Before the answer leaves: whoever reads the gauges after the answer sees the edit gone.
            self._metrics.load(len(self._active), self._preparing + len(self._ready))
        self._end(edit, outcome, message, exc_info)

    def _end(self, edit: _Edit, outcome: str, message: str = "", exc_info: bool = False) -> None:
        sink = edit.request.sink
        answer = {OK: (sink.finished, (edit.state,)), FAILED: (sink.failed, (message,)),
                  CANCELLED: (sink.cancelled, (message,))}[outcome]
        self._outbox.put(answer)
        now = time.monotonic()
        self._metrics.ended(outcome, now - (edit.started or edit.submitted))
        state = edit.state
        fields = dict(edit.request.log_fields, outcome=outcome,
                      steps_run=state.step_index if state else 0,
                      queue_ms=round(((edit.started or now) - edit.submitted) * 1000.0, 3),
                      duration_ms=round((now - edit.submitted) * 1000.0, 3))
        if message:
            fields["error"] = message
        level = logging.ERROR if outcome == FAILED else logging.INFO
        log_event(self._log, f"denoise {outcome}", request_id=edit.request.request_id, stage="denoise",
                  level=level, exc_info=exc_info, **fields)

    def _deliver(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            function, args = item
            try:
                function(*args)
            except Exception:  # a sink that cannot answer (client gone) must not stop the others
                self._log.exception("delivering an answer failed")

    # --- shutdown --------------------------------------------------------------------------------

    def close(self, timeout_s: float = 60.0) -> None:
        """Finish every admitted edit (new ones are refused), then stop the threads."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._worker.join(timeout_s)
        self._prepare_pool.shutdown(wait=True)
        self._outbox.put(None)
        self._outbox_thread.join(timeout_s)
