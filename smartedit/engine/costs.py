"""What the engine's work costs on this device, measured as it runs: the planner's inputs.

- A UNet call of ``rows`` rows takes ``a + b * rows`` seconds (a: the call's fixed cost -- launch, the BLS
  round trip, kernels that do not scale; b: per row). ``UNetCost`` fits ``a`` and ``b`` per latent size by
  least squares over the calls the engine makes, old calls decaying, so that the fit follows a device
  whose speed changes (clocks, other tenants). Two pseudo-calls from a prior anchor the fit until the
  calls themselves vary in size (a steady load makes calls of one size, which fix ``a + b * rows`` but
  not the split); they never decay, and each weighs ``1 - decay`` of a fresh call, so that any spread in
  the calls' sizes outweighs them.
- The host's share of a step (the sampler's step and the batch's copies for each edit) is
  ``HostCost``: a moving average of seconds per edit-step.

A call's time is its device time only: the engine measures from when the call left or, when the
UNet was still busy with the call before it, from when that one came back (``ServiceClock``), so a
call that queued behind another lane's is not counted as slow. That assumes one call at a time on
the device, which is what a UNet model instance is.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# The prior: the shipped table's SD 1.5 at 512 px on an A10-class GPU, in seconds. Only a start.
PRIOR_A_S, PRIOR_B_S = 0.0056, 0.0020
# Each call's weight decays by this per later call: ~70 calls carry half the fit.
DECAY = 0.99
# How fast the host's average follows a change (weight of the newest step).
HOST_SMOOTHING = 0.05


@dataclass(frozen=True)
class CostFit:
    """``a`` (seconds per call) and ``b`` (seconds per row) of one latent size, from ``calls`` calls."""

    a: float
    b: float
    calls: int

    def seconds(self, rows: int) -> float:
        return self.a + self.b * rows


class UNetCost:
    """The decayed least-squares fit of call time against rows, for one latent size."""

    def __init__(self, max_rows: int, prior_a: float = PRIOR_A_S, prior_b: float = PRIOR_B_S, decay: float = DECAY):
        self._decay = decay
        # Weighted sums of 1, x, y, x^2, x*y over the calls (decayed) and the prior's two points (not).
        self._calls = [0.0] * 5
        prior_weight = 1.0 - decay
        self._prior = [0.0] * 5
        for rows in (1, max(2, max_rows)):
            self._add(self._prior, rows, prior_a + prior_b * rows, prior_weight)
        self._count = 0
        self._lock = threading.Lock()

    @staticmethod
    def _add(sums: list[float], rows: float, seconds: float, weight: float) -> None:
        for index, value in enumerate((1.0, rows, seconds, rows * rows, rows * seconds)):
            sums[index] += weight * value

    def observe(self, rows: int, seconds: float) -> None:
        """One call of ``rows`` rows took ``seconds`` on the device."""
        with self._lock:
            self._calls = [value * self._decay for value in self._calls]
            self._add(self._calls, rows, seconds, 1.0)
            self._count += 1

    def fit(self) -> CostFit:
        with self._lock:
            w, x, y, xx, xy = (c + p for c, p in zip(self._calls, self._prior))
            count = self._count
        spread = w * xx - x * x
        b = max(0.0, (w * xy - x * y) / spread) if spread > 0 else 0.0
        a = (y - b * x) / w
        if a < 0:  # costs are not negative: all of it per row
            a, b = 0.0, max(0.0, y / x) if x else 0.0
        return CostFit(a=a, b=b, calls=count)


class HostCost:
    """Seconds of the engine's own work per edit per step (the sampler's step, the batch's copies)."""

    def __init__(self, smoothing: float = HOST_SMOOTHING):
        self._smoothing = smoothing
        self._seconds: float | None = None
        self._lock = threading.Lock()

    def observe(self, edits: int, seconds: float) -> None:
        """The host spent ``seconds`` on one step of ``edits`` edits."""
        if edits <= 0:
            return
        each = seconds / edits
        with self._lock:
            self._seconds = each if self._seconds is None else (
                self._seconds + self._smoothing * (each - self._seconds))

    @property
    def per_edit_step(self) -> float:
        with self._lock:
            return self._seconds or 0.0


class ServiceClock:
    """A call's device time: from when it left, or from when the call before it came back if that was
    later (it queued behind it)."""

    def __init__(self):
        self._last_end = 0.0
        self._lock = threading.Lock()

    def service_time(self, started: float, ended: float) -> float:
        with self._lock:
            began = max(started, min(self._last_end, ended))
            self._last_end = max(self._last_end, ended)
        return ended - began


class CostEstimates:
    """The engine's measured costs: a ``UNetCost`` per latent size, the host's per edit-step."""

    def __init__(self, max_rows: int):
        self._max_rows = max_rows
        self._unet: dict[tuple[int, ...], UNetCost] = {}
        self._lock = threading.Lock()
        self.host = HostCost()
        self.clock = ServiceClock()

    def unet(self, latent_size: tuple[int, ...]) -> UNetCost:
        with self._lock:
            cost = self._unet.get(latent_size)
            if cost is None:
                cost = self._unet[latent_size] = UNetCost(self._max_rows)
            return cost

    def fits(self) -> dict[tuple[int, ...], CostFit]:
        with self._lock:
            costs = dict(self._unet)
        return {size: cost.fit() for size, cost in costs.items()}


@dataclass(frozen=True)
class Load:
    """What the active edits were when a plan ran: rows per latent size, and how many edits."""

    rows_by_size: tuple[tuple[tuple[int, ...], int], ...]
    edits: int


@dataclass(frozen=True)
class _Turn:
    seconds: float  # wall seconds of the turn
    steps: int  # edit-steps it took
    load: Load
    at: float  # monotonic


class PlanRecord:
    """What each plan (a number of lanes) delivered lately: the wall seconds and edit-steps of its last
    ``keep`` turns, each with the load it ran under, and when.

    The cost model (``UNetCost``, ``HostCost``) cannot see everything a lane hides (the BLS copies of
    the next call, the stub's handling) nor everything it costs, so the planner scales each plan's
    prediction by how far its turns took longer than the model predicts for them
    (``planner.check_against_record``). That prediction is made when the planner asks, with the model as
    it is then, for each turn's own load: a ratio fixed when a turn ran would keep the model's error of
    that moment (a fit from calls of one size, before the load grew) for as long as the plan did not run
    again, and hold the engine in the other plan. A ratio, unlike a time, compares across loads.
    """

    def __init__(self, keep: int = 12, fresh_s: float = 30.0, min_samples: int = 5):
        self.keep = keep
        self.fresh_s = fresh_s
        self.min_samples = min_samples
        self._plans: dict[int, deque[_Turn]] = {}
        self._lock = threading.Lock()

    def observe(self, lanes: int, seconds: float, steps: int, load: Load, now: float) -> None:
        """A turn of ``steps`` edit-steps took ``seconds`` with ``lanes`` lanes open, under ``load``."""
        if seconds <= 0 or steps <= 0 or load.edits <= 0:
            return
        with self._lock:
            self._plans.setdefault(lanes, deque(maxlen=self.keep)).append(_Turn(seconds, steps, load, now))

    def correction(self, lanes: int, now: float, predict: Callable[[Load], float]) -> float | None:
        """The plan's recent measured / predicted time (``predict``: the model's seconds per edit-step for
        this plan under a load), over its turns together: with lanes of unequal rows, one turn's time says
        little; None when it has not run enough lately."""
        with self._lock:
            turns = [turn for turn in self._plans.get(lanes, ()) if now - turn.at <= self.fresh_s]
        if len(turns) < self.min_samples:
            return None
        predicted = sum(turn.steps * predict(turn.load) for turn in turns)
        return sum(turn.seconds for turn in turns) / predicted if predicted > 0 else None
