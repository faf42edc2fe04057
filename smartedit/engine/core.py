"""The batched denoising engine: one worker steps every active edit of its instance together.

    submit() ─► admission (bounded) ─► prepare pool ─► ready queue ─► worker ─► outbox ─► sinks
                 refuses past the       start_denoising,              each turn:
                 bounds at once         VAE-encodes the init           admit ready edits into the lighter
                                        image (strength < 1)           lane; for each idle lane, drop stopped
                                                                       edits and send one UNet call per latent
                                                                       size (chunked to the UNet's max rows);
                                                                       take the oldest lane's answers, advance
                                                                       each of its edits

This is iteration-level batching (what LLM servers call continuous batching, here over denoising
steps): a new edit joins at the next iteration and never waits for others to finish; a finished,
failed or cancelled edit leaves at once and frees its rows. Edits keep their own sampler, step
count, guidance, strength and timestep: the UNet takes one timestep per row, and everything else
happens per edit in ``DenoiseState.advance``.

Lanes pipeline host and device: the active edits may be split into up to ``unet_lanes`` cohorts of
about the same rows, and while one cohort's UNet call is on the device the worker advances the other
cohort and sends its next call, which then waits at the UNet already built. The host's share of a
step (sampler arithmetic for every edit, building the batch) is otherwise dead time for the device;
but each lane adds a call, and with it the call's fixed cost. So the engine measures both as it runs
(``smartedit.engine.costs``: each call's device time against its rows, the host's time per edit) and
the planner opens a lane only where the host work it hides outweighs the fixed cost it adds
(``choose_lane_count``), checked against what each plan delivered lately (``check_against_record``);
edits move between lanes as soon as their step is back.

Rows of one edit never change with its company, so an edit gives the same result whatever else is
in the batch (provided the UNet is batch-invariant; ONNX Runtime on CPU is bit-for-bit).

The worker's two pure parts live apart, with tests of their own: the planner
(``smartedit.engine.planner``: the step's UNet calls, a joining edit's lane) and the batch builder
(``smartedit.engine.batch_builder``: the calls' row layout). Nothing here knows Triton: the UNet is a
function, answers go to an ``EditSink``. The ``scheduler``
Python models plug in BLS calls and response senders; the tests plug in ONNX Runtime directly.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from smartedit.diffusion.denoise import SAMPLE, DenoiseState
from smartedit.diffusion.resume import checkpoint
from smartedit.diffusion.resume_state import ResumeState
from smartedit.engine.batch_builder import UNetBatchBuilder
from smartedit.engine.costs import CostEstimates, CostFit, Load, PlanRecord
from smartedit.engine.planner import (
    check_against_record, choose_lane, choose_lane_count, plan_unet_calls, predicted_rounds,
)
from smartedit.errors import RequestError, ServiceInterrupted
from smartedit.serving.structured_log import log_event

# The UNet's inputs by name (sample [rows, C, h, w], timestep [rows], the family's row inputs such as
# encoder_hidden_states [rows, L, D]) -> noise_pred [rows, c, h, w]
BatchedUNet = Callable[[dict[str, np.ndarray]], np.ndarray]

# INTERRUPTED: a fault outside the edit stopped it (a model process died); sending it again may succeed.
OK, FAILED, CANCELLED, INTERRUPTED = "ok", "failed", "cancelled", "interrupted"
INVALID = "invalid"  # the reason of a failure that is the request's: its sink answers INVALID_ARG


class AtCapacity(Exception):
    """The engine holds as many edits as its limits allow; the request is refused before any work."""


class TooManyImages(Exception):
    """A request wants more places (one per image) than the engine ever holds: no retry would help."""


@dataclass(frozen=True)
class EngineLimits:
    """How much one engine takes on.

    Attributes:
        max_active_edits: edits denoising at once; each needs 1 UNet row per step, 2 under guidance.
        max_queued_edits: admitted edits waiting for an active slot; past this, requests are refused.
        max_unet_rows: rows per UNet call (the UNet's max batch); larger iterations make several calls.
        unet_lanes: the most cohorts the active edits are split into, each with its UNet calls in
            flight in turn. With 2, one cohort's host work (sampler steps, batch building, the BLS
            copies) runs while the other's rows are on the device, at the cost of one more fixed
            UNet overhead per step; 1 makes one call per iteration (host and device take turns). How
            many are open is the planner's choice, from the measured costs (``smartedit.engine.costs``).
        lane_min_rows: 0 (the default): the measured costs decide; n > 0: a fixed rule in their place,
            as many lanes open as would hold n rows each (an operator's override).
    """

    max_active_edits: int
    max_queued_edits: int
    max_unet_rows: int
    unet_lanes: int = 1
    lane_min_rows: int = 0

    def __post_init__(self):
        if self.max_active_edits < 1:
            raise ValueError(f"max_active_edits must be >= 1, got {self.max_active_edits}")
        if self.max_queued_edits < 0:
            raise ValueError(f"max_queued_edits must be >= 0, got {self.max_queued_edits}")
        if self.max_unet_rows < 2:
            raise ValueError(f"max_unet_rows must be >= 2 (one edit under guidance), got {self.max_unet_rows}")
        if not 1 <= self.unet_lanes <= 4:
            raise ValueError(f"unet_lanes must be between 1 and 4, got {self.unet_lanes}")
        if self.lane_min_rows < 0:
            raise ValueError(f"lane_min_rows must be >= 0, got {self.lane_min_rows}")


class EditSink(Protocol):
    """Where one edit's answers go. Called from the engine's outbox thread, in order, never concurrently.

    ``reason`` says why in a word, for the request counters: ``deadline``, ``client_cancelled``,
    ``shutting_down`` (cancelled); ``model_process_died`` (interrupted); ``prepare``, ``denoise`` (failed).
    """

    def progress(self, step: int, total_steps: int, preview_latents: torch.Tensor | None,
                 checkpoint: ResumeState | None = None) -> None: ...

    def finished(self, state: DenoiseState) -> None: ...

    def failed(self, message: str, reason: str = "") -> None: ...

    def cancelled(self, message: str, reason: str = "") -> None: ...

    def interrupted(self, message: str, reason: str = "") -> None: ...


class EngineMetrics:
    """What the engine reports as it runs; this base class ignores everything (tests, benchmarks)."""

    def refused(self) -> None: ...

    def load(self, active: int, queued: int) -> None: ...

    def joined(self, queue_wait_s: float) -> None: ...

    def unet_call(self, rows: int) -> None: ...

    def stepped(self, edits: int) -> None: ...

    def plan(self, lanes: int, fits: dict[tuple[int, ...], CostFit], host_s_per_edit: float) -> None: ...

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
        checkpoint_every: n > 0: a checkpoint of the loop (``smartedit.diffusion.resume``) with the progress
            of every n-th step but the last (progress messages must be on); 0: none.
        reservation: the token of the place ``reserve`` kept for this edit, if any.
        log_fields: extra fields of the edit's log line (sampler, steps, ...).
    """

    request_id: str
    prepare: Callable[[], DenoiseState]
    sink: EditSink
    deadline: float | None = None
    cancelled: Callable[[], bool] = lambda: False
    preview_every: int | None = None
    checkpoint_every: int = 0
    reservation: str | None = None
    log_fields: dict = field(default_factory=dict)


@dataclass(eq=False)  # compared by identity: the batch builder asks "is this row still that edit's?"
class _Edit:
    request: EditRequest
    submitted: float  # monotonic
    state: DenoiseState | None = None
    started: float | None = None  # monotonic, when it joined the active set
    lane: int = 0  # the cohort it steps with

    @property
    def rows(self) -> int:
        return self.state.rows

    @property
    def latent_size(self) -> tuple[int, ...]:
        return tuple(self.state.latents.shape[-2:])

    def stop_reason(self, now: float, shutdown: str | None = None) -> tuple[str, str] | None:
        """(reason, why in words) the edit must stop now, or None."""
        if shutdown is not None:
            return "shutting_down", shutdown
        if self.request.deadline is not None and now >= self.request.deadline:
            return "deadline", "the caller's deadline passed"
        if self.request.cancelled():
            return "client_cancelled", "the caller cancelled it"
        return None

    def wants_preview(self) -> bool:
        every = self.request.preview_every
        if not every:
            return False
        return self.state.step_index % every == 0 or self.state.done

    def wants_checkpoint(self) -> bool:
        every = self.request.checkpoint_every
        return bool(every) and self.state.step_index % every == 0 and not self.state.done


class DenoiseEngine:
    """Runs admitted edits to the end, all active ones stepping in shared UNet calls.

    Args:
        unet: the batched UNet call (a BLS call to the ``unet`` model when served).
        limits: active/queued bounds and the UNet's max rows.
        logger: where each edit's one ``denoise`` line goes (JSON fields: request id, outcome, steps...).
        metrics: counters and gauges to keep up to date.
        prepare_workers: threads that build edits' states (they make BLS calls when strength < 1).
        shutdown_reason: why every edit must stop now (the server's drain timed out), or None; asked
            before every step.
        costs: where the measured costs go and the planner reads them (a fresh ``CostEstimates``; tests
            pass pinned ones to force a plan).
        plans: the record of what each plan delivered, against which the planner checks the cost model
            (a fresh ``PlanRecord``; tests pass one that never overrules the model, to force a plan).
    """

    def __init__(self, unet: BatchedUNet, limits: EngineLimits, *, logger: logging.Logger | None = None,
                 metrics: EngineMetrics | None = None, prepare_workers: int = 2,
                 shutdown_reason: Callable[[], str | None] = lambda: None, costs: CostEstimates | None = None,
                 plans: PlanRecord | None = None):
        self.limits = limits
        self._unet = unet
        self._shutdown_reason = shutdown_reason
        self._log = logger or logging.getLogger("smartedit.engine.core")
        self._metrics = metrics or EngineMetrics()
        self._lock = threading.Condition()
        self._preparing = 0
        # token -> (monotonic expiry, places) of the places kept by ``reserve`` for edits on their way
        self._reserved: dict[str, tuple[float, int]] = {}
        self._ready: deque[_Edit] = deque()
        # Active edits per lane, by latent size. An edit keeps its place in its group until it leaves,
        # and the group's last edit takes the place of one that leaves: most rows of the next batch
        # are where they were, so their constant parts need not be copied again (``UNetBatchBuilder``).
        self._lanes: list[dict[tuple[int, ...], list[_Edit]]] = [{} for _ in range(limits.unet_lanes)]
        self._active = 0
        self._batches = UNetBatchBuilder()
        # What calls and steps cost on this device, measured as they run; the planner's inputs.
        self.costs = costs or CostEstimates(limits.max_unet_rows)
        # How far each plan fell short of the cost model lately: the check on the model's choice.
        self.plans = plans or PlanRecord()
        self._plan_load: Load | None = None  # the load the open plan was chosen for (by the cost model)
        self._open_lanes = 1
        self._turns_in_plan = 0  # turns since the open lanes last changed: the first ones are a transition
        self._last_receive: float | None = None  # perf_counter at the end of the last turn with edits active
        self._plan_reported = 0.0  # monotonic, when the plan's gauges were last set
        self._closing = False
        self._prepare_pool = ThreadPoolExecutor(prepare_workers, thread_name_prefix="engine-prepare")
        # UNet calls leave from these threads, so that the worker can step one lane while another's
        # rows are on the device (one lane making one call: the worker makes it, ``_send``). Two per
        # lane: a lane with several latent sizes makes several calls.
        self._unet_pool = ThreadPoolExecutor(2 * limits.unet_lanes, thread_name_prefix="engine-unet")
        # Answers (responses over IPC, PNG previews) leave from their own thread, so that the worker
        # goes straight on to the next UNet call.
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox_thread = threading.Thread(target=self._deliver, name="engine-outbox", daemon=True)
        self._worker = threading.Thread(target=self._run, name="engine-worker", daemon=True)
        self._outbox_thread.start()
        self._worker.start()

    # --- admission -------------------------------------------------------------------------------

    def load(self) -> tuple[int, int]:
        """(active, queued) edits now; queued counts those reserved or still being prepared."""
        with self._lock:
            return self._active, self._queued_locked()

    def _queued_locked(self) -> int:
        return sum(places for _, places in self._reserved.values()) + self._preparing + len(self._ready)

    @property
    def capacity(self) -> int:
        """The most edits the engine holds at once, denoising and waiting."""
        return self.limits.max_active_edits + self.limits.max_queued_edits

    def reserve(self, token: str, request_id: str = "", ttl_s: float = 60.0, places: int = 1) -> None:
        """Keep ``places`` places (one per image of a request) for edits still on their way (being
        decoded, their prompt encoded), so that a request the engine cannot take is refused before any
        of that work. The places lapse after ``ttl_s`` if no edit claims them; each ``submit`` with the
        token claims one.

        Raises:
            AtCapacity: as ``submit`` would.
            TooManyImages: ``places`` is more than the engine ever holds (``capacity``).
        """
        self.check_places(places)
        with self._lock:
            self._check_capacity_locked(request_id, {}, places)
            self._reserved[token] = (time.monotonic() + ttl_s, places)
            self._metrics.load(self._active, self._queued_locked())

    def check_places(self, places: int) -> None:
        """Raise ``TooManyImages`` unless 1 <= ``places`` <= ``capacity``."""
        if places > self.capacity:
            raise TooManyImages(f"{places} images at once are more than this server's denoising engine ever holds "
                                f"({self.capacity}); ask for at most {self.capacity}")
        if places < 1:
            raise ValueError(f"places must be >= 1, got {places}")

    def release(self, token: str) -> None:
        """Give back reserved places whose edits will not come (the request turned out invalid)."""
        with self._lock:
            if self._reserved.pop(token, None) is not None:
                self._metrics.load(self._active, self._queued_locked())

    def _claim_locked(self, token: str | None) -> bool:
        """Take one of the places reserved under ``token``; whether there was one."""
        if token not in self._reserved:
            return False
        expiry, places = self._reserved[token]
        if places > 1:
            self._reserved[token] = (expiry, places - 1)
        else:
            del self._reserved[token]
        return True

    def submit(self, request: EditRequest) -> None:
        """Admit ``request`` (into its reserved place, if it has one) or refuse it at once.

        Raises:
            AtCapacity: the engine already holds ``max_active_edits + max_queued_edits`` edits.
            RuntimeError: the engine is shutting down, or its worker has stopped.
        """
        with self._lock:
            if not self._claim_locked(request.reservation):
                self._check_capacity_locked(request.request_id, request.log_fields)
            self._preparing += 1
            self._metrics.load(self._active, self._queued_locked())
        edit = _Edit(request, submitted=time.monotonic())
        self._prepare_pool.submit(self._prepare, edit)

    def _check_capacity_locked(self, request_id: str, log_fields: dict, places: int = 1) -> None:
        if self._closing:
            raise RuntimeError("the denoising engine is shutting down")
        if not self._worker.is_alive():
            raise RuntimeError("the denoising engine's worker has stopped; see the log for why")
        now = time.monotonic()
        for token in [token for token, (expiry, _) in self._reserved.items() if expiry < now]:
            del self._reserved[token]  # reserved for an edit that never came
        limits = self.limits
        active, queued = self._active, self._queued_locked()
        if active + queued + places > self.capacity:
            self._metrics.refused()
            message = (f"server at capacity: {active} edits denoising and {queued} waiting on this loop instance "
                       f"(limits {limits.max_active_edits} + {limits.max_queued_edits}); retry later")
            log_event(self._log, "denoise refused", request_id=request_id, stage="denoise", level=logging.WARNING,
                      outcome="refused", error=message, **log_fields)
            raise AtCapacity(message)

    def _prepare(self, edit: _Edit) -> None:
        try:
            edit.state = edit.request.prepare()
            edit.state.track_prediction = bool(edit.request.checkpoint_every)  # what a checkpoint image needs
            edit.request.prepare = None  # its closure holds the request's copies of the inputs
        except Exception as error:  # a bad edit fails alone; the request already passed validation
            with self._lock:
                self._preparing -= 1
                self._lock.notify()
            if isinstance(error, ServiceInterrupted):
                self._end(edit, INTERRUPTED, str(error), reason="model_process_died")
            elif isinstance(error, RequestError):  # what only the started edit can check (a resume state's fit)
                self._end(edit, FAILED, str(error), reason=INVALID)
            else:
                self._end(edit, FAILED, f"could not start denoising: {error}", exc_info=True, reason="prepare")
            return
        with self._lock:
            self._preparing -= 1
            self._ready.append(edit)
            self._lock.notify()

    # --- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        # Each turn: admit ready edits, send the UNet calls of every lane that has none in flight, then
        # take the oldest lane's answers and advance its edits. With one lane that is call, advance,
        # call...; with two, one lane's advance overlaps the other's call.
        in_flight: deque[_LaneStep] = deque()
        while True:
            with self._lock:
                while not self._active and not self._ready and not in_flight:
                    if self._closing and not self._preparing:
                        return
                    self._lock.wait()
                gone = self._drop_stopped_ready_locked()
                joining = self._take_ready_locked()
                self._metrics.load(self._active, self._queued_locked())
            for edit, (reason, why) in gone:
                self._end(edit, CANCELLED, f"stopped before its first step: {why}", reason=reason)
            now = time.monotonic()
            for edit in joining:
                edit.started = now
                self._metrics.joined(now - edit.submitted)
            busy = {step.lane for step in in_flight}
            self._balance_lanes(busy)
            for lane in range(len(self._lanes)):
                if lane not in busy and self._lanes[lane]:
                    step = self._guarded(lane, self._send, lane)
                    if step is not None and step.calls:
                        in_flight.append(step)
            if in_flight:
                step = in_flight.popleft()
                self._guarded(step.lane, self._receive, step)

    def _guarded(self, lane: int, work, *args):
        try:
            return work(*args)
        except Exception as error:  # a fault of the engine itself: fail what the lane held, keep serving
            self._log.exception("a denoising step failed")
            for edit in [edit for group in self._lanes[lane].values() for edit in group]:
                self._leave(edit, FAILED, f"the denoising engine failed: {error}", reason="denoise")
            return None

    def _drop_stopped_ready_locked(self) -> list[tuple[_Edit, str]]:
        # Edits whose caller left while they queued give their place back before they cost a step.
        now, gone, kept = time.time(), [], deque()
        shutdown = self._shutdown_reason() if self._ready else None
        for edit in self._ready:
            stop = edit.stop_reason(now, shutdown)
            if stop is None:
                kept.append(edit)
            else:
                gone.append((edit, stop))
        self._ready = kept
        return gone

    def _take_ready_locked(self) -> list[_Edit]:
        joining = []
        while self._ready and self._active < self.limits.max_active_edits:
            joining.append(self._ready.popleft())
            self._active += 1
        self._open_lanes = self._plan_lanes(joining)
        rows = [self._rows_of(lane) for lane in range(len(self._lanes))]
        for edit in joining:
            edit.lane = choose_lane(rows, self._open_lanes)
            rows[edit.lane] += edit.rows
            self._lanes[edit.lane].setdefault(edit.latent_size, []).append(edit)
        return joining

    def _plan_lanes(self, joining: list[_Edit]) -> int:
        """How many lanes the active edits and ``joining`` should step in (``choose_lane_count``), from
        the measured costs, under the configured bounds."""
        edits = [edit for lane in self._lanes for group in lane.values() for edit in group] + joining
        rows_by_size: dict[tuple[int, ...], int] = {}
        for edit in edits:
            rows_by_size[edit.latent_size] = rows_by_size.get(edit.latent_size, 0) + edit.rows
        limits, lanes = self.limits, 1
        if limits.lane_min_rows:  # the operator's fixed rule
            lanes = max(1, min(limits.unet_lanes, sum(rows_by_size.values()) // limits.lane_min_rows))
        elif limits.unet_lanes > 1 and edits:
            load = Load(tuple(sorted(rows_by_size.items())), len(edits))
            rounds = self._rounds_predictor()
            predicted = rounds(load)
            now = time.monotonic()
            lanes = check_against_record(predicted, choose_lane_count(predicted), lambda plan: self.plans.correction(
                plan, now, lambda turn: rounds(turn).get(plan, 0.0) / turn.edits))
            self._plan_load = load
        if lanes != self._open_lanes:
            self._turns_in_plan = 0
        if edits and time.monotonic() - self._plan_reported >= 1.0:  # a gauge update is an IPC message served
            self._report_plan(lanes)
        return lanes

    def _rounds_predictor(self) -> Callable[[Load], dict[int, float]]:
        """The cost model, as the costs are now: a load's seconds for a round of steps in each number of
        lanes it may step in (``predicted_rounds``), computed once per load (a steady load's turns in the
        plan record repeat it)."""
        fits: dict[tuple[int, ...], CostFit] = {}
        host_s, limits = self.costs.host.per_edit_step, self.limits
        known: dict[Load, dict[int, float]] = {}

        def rounds(load: Load) -> dict[int, float]:
            if load not in known:
                rows_by_size = dict(load.rows_by_size)
                for size in rows_by_size:
                    if size not in fits:
                        fits[size] = self.costs.unet(size).fit()
                known[load] = predicted_rounds(rows_by_size, load.edits, fits, host_s, limits.unet_lanes,
                                               limits.max_unet_rows)
            return known[load]

        return rounds

    def _report_plan(self, lanes: int) -> None:
        self._plan_reported = time.monotonic()
        self._metrics.plan(lanes, self.costs.fits(), self.costs.host.per_edit_step)

    def _balance_lanes(self, busy: set[int]) -> None:
        """Move edits whose step is back (their lane not in ``busy``) out of lanes past the open ones, and
        from a heavier open lane into a lighter one, so that the plan takes effect at once rather than
        as edits come and go. An edit's rows, and so its result, do not change with its lane."""
        rows = [self._rows_of(lane) for lane in range(len(self._lanes))]
        for lane in range(len(self._lanes)):
            if lane in busy:
                continue
            for size, group in list(self._lanes[lane].items()):
                while group:
                    edit, target = group[-1], choose_lane(rows, self._open_lanes)
                    closing = lane >= self._open_lanes
                    if not closing and rows[lane] - rows[target] <= edit.rows:
                        break  # as even as whole edits make it
                    group.pop()
                    rows[lane] -= edit.rows
                    edit.lane = target
                    rows[target] += edit.rows
                    self._lanes[target].setdefault(size, []).append(edit)
                if not group:
                    del self._lanes[lane][size]

    def _rows_of(self, lane: int) -> int:
        return sum(edit.rows for group in self._lanes[lane].values() for edit in group)

    def _send(self, lane: int) -> "_LaneStep":
        """Start one denoising step of every edit in ``lane``: drop those whose caller left, then send
        one UNet call per latent size (chunked to the UNet's max rows)."""
        now, shutdown = time.time(), self._shutdown_reason()
        for edit in [edit for group in self._lanes[lane].values() for edit in group]:
            stop = edit.stop_reason(now, shutdown)
            if stop is not None:
                self._leave(edit, CANCELLED, f"stopped after {edit.state.step_index} of "
                                             f"{edit.state.total_steps} steps: {stop[1]}", reason=stop[0])
        started = time.perf_counter()
        step = _LaneStep(lane)
        calls = [((lane, size, index), chunk) for size, group in list(self._lanes[lane].items())
                 for index, chunk in enumerate(plan_unet_calls(group, self.limits.max_unet_rows))]
        # One lane making one call: nothing can overlap it, so the worker makes the call itself rather
        # than hand it to a thread and wait for that (two thread switches a step, under the GIL).
        inline = self._open_lanes == 1 and len(calls) == 1
        for key, chunk in calls:
            step.keys.append(key)
            self._send_chunk(step, key, chunk, inline)
        self._batches.keep_only(lane, step.keys)
        step.host_s += time.perf_counter() - started - step.inline_call_s
        return step

    def _send_chunk(self, step: "_LaneStep", key, chunk: list[_Edit], inline: bool = False) -> None:
        """One UNet call for ``chunk``'s rows (made here when ``inline``, else from the UNet threads); an
        edit whose input cannot be made fails alone."""
        inputs = []
        for edit in chunk:
            try:
                inputs.append((edit, edit.state.model_input()))
            except Exception as error:
                self._leave(edit, FAILED, f"step {edit.state.step_index} failed: {error}", exc_info=True,
                            reason="denoise")
        if not inputs:
            return
        named = self._batches.inputs(key, inputs)
        self._metrics.unet_call(named[SAMPLE].shape[0])
        # The arrays stay untouched until this lane's answers are in: the lane's next step builds its
        # batches only after ``_receive``.
        if inline:
            call, called = Future(), time.perf_counter()
            try:
                call.set_result(self._measured_unet(named, chunk[0].latent_size))
            except Exception as error:  # raised where a thread's call would raise it: in ``_receive``
                call.set_exception(error)
            step.inline_call_s += time.perf_counter() - called
        else:
            call = self._unet_pool.submit(self._measured_unet, named, chunk[0].latent_size)
        step.calls.append(([edit for edit, _ in inputs], call))

    def _measured_unet(self, named: dict[str, np.ndarray], latent_size: tuple[int, ...]) -> np.ndarray:
        """The UNet call, its device time added to the costs of its latent size."""
        started = time.perf_counter()
        noise_pred = self._unet(named)
        ended = time.perf_counter()
        self.costs.unet(latent_size).observe(named[SAMPLE].shape[0], self.costs.clock.service_time(started, ended))
        return noise_pred

    def _receive(self, step: "_LaneStep") -> None:
        """Wait for a lane's UNet calls and advance each of their edits by one step."""
        stepped = 0
        for chunk, call in step.calls:
            try:
                noise_pred = call.result()
            except ServiceInterrupted as error:  # the UNet's process died: sending the edits again will do
                for edit in chunk:
                    self._leave(edit, INTERRUPTED, str(error), reason="model_process_died")
                continue
            except Exception as error:  # the call's edits fail; other chunks go on
                for edit in chunk:
                    self._leave(edit, FAILED, f"the UNet call failed: {error}", reason="denoise")
                continue
            started = time.perf_counter()
            offset = 0
            for edit in chunk:
                rows = torch.from_numpy(noise_pred[offset:offset + edit.rows])
                offset += edit.rows
                state = edit.state
                try:
                    state.advance(rows)
                    preview = state.preview_latents().clone() if edit.wants_preview() else None
                    saved = checkpoint(state) if edit.wants_checkpoint() else None
                except Exception as error:
                    self._leave(edit, FAILED, f"step {state.step_index} failed: {error}", exc_info=True,
                                reason="denoise")
                    continue
                stepped += 1
                if edit.request.preview_every is not None:
                    self._outbox.put((edit.request.sink.progress,
                                      (state.step_index, state.total_steps, preview, saved)))
                if state.done:
                    self._leave(edit, OK)
            step.host_s += time.perf_counter() - started
        self.costs.host.observe(stepped, step.host_s)
        self._record_turn(stepped)
        self._metrics.stepped(stepped)
        if not self._active:  # idle now: the gauges show what the last edits measured
            self._report_plan(self._open_lanes)

    def _record_turn(self, stepped: int) -> None:
        """What the open plan delivered this turn (wall time since the last turn's end, and the edit-steps
        taken), once it has run a round past the change that opened it."""
        now = time.perf_counter()
        self._turns_in_plan += 1
        if self._last_receive is not None and self._turns_in_plan > 2 * self._open_lanes and stepped \
                and self._plan_load is not None:
            self.plans.observe(self._open_lanes, now - self._last_receive, stepped, self._plan_load, time.monotonic())
        self._last_receive = now if self._active else None

    def _leave(self, edit: _Edit, outcome: str, message: str = "", exc_info: bool = False, reason: str = "") -> None:
        with self._lock:
            groups = self._lanes[edit.lane]
            group = groups[edit.latent_size]
            index = group.index(edit)
            group[index] = group[-1]
            group.pop()
            if not group:
                del groups[edit.latent_size]
            self._active -= 1
            # Before the answer leaves: whoever reads the gauges after the answer sees the edit gone.
            self._metrics.load(self._active, self._queued_locked())
        self._end(edit, outcome, message, exc_info, reason)

    def _end(self, edit: _Edit, outcome: str, message: str = "", exc_info: bool = False, reason: str = "") -> None:
        sink = edit.request.sink
        if outcome == OK:
            self._outbox.put((sink.finished, (edit.state,)))
        else:
            method = {FAILED: sink.failed, CANCELLED: sink.cancelled, INTERRUPTED: sink.interrupted}[outcome]
            self._outbox.put((functools.partial(method, reason=reason), (message,)))
        now = time.monotonic()
        self._metrics.ended(outcome, now - edit.submitted)
        state = edit.state
        fields = dict(edit.request.log_fields, outcome=outcome,
                      steps_run=state.step_index if state else 0,
                      queue_ms=round(((edit.started or now) - edit.submitted) * 1000.0, 3),
                      duration_ms=round((now - edit.submitted) * 1000.0, 3))
        if message:
            fields["error"] = message
        if reason:
            fields["reason"] = reason
        level = {FAILED: logging.ERROR, INTERRUPTED: logging.WARNING}.get(outcome, logging.INFO)
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

    def close(self, timeout_s: float = 60.0) -> bool:
        """Finish every admitted edit (new ones are refused), then stop the threads.

        Returns:
            Whether every thread stopped within ``timeout_s`` (if not, the worker may still report).
        """
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._worker.join(timeout_s)
        self._prepare_pool.shutdown(wait=True)
        self._unet_pool.shutdown(wait=True)
        self._outbox.put(None)
        self._outbox_thread.join(timeout_s)
        return not (self._worker.is_alive() or self._outbox_thread.is_alive())


@dataclass
class _LaneStep:
    """One lane's step in flight: its UNet calls, each with the edits whose rows it carries."""

    lane: int
    calls: list = field(default_factory=list)  # (edits, Future of noise_pred)
    keys: list = field(default_factory=list)  # the batch arrays' keys it used
    host_s: float = 0.0  # the worker's own time on it: building its calls, advancing its edits
    inline_call_s: float = 0.0  # of the time in ``_send``, the UNet call the worker made itself
