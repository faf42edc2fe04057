"""Noticing, from inside a Python model, that a model it calls lost its process.

Triton 2.51 answers nothing for a decoupled or thread-answering Python model whose stub dies: its
caller's BLS iterator waits for ever (observed: edits in flight in a killed ``denoise_engine`` hung
until their clients' two-minute timeout). And a call that does fail says only INTERNAL "Stub process
... is not healthy". So callers watch the callee's processes themselves: a BLS wait runs in a helper
thread while the caller checks every half second that the processes it started with are alive; if
one died, the caller answers its client UNAVAILABLE ("send the edit again") and leaves the helper
thread blocked (one per edit caught by the death; the stub's replacement cannot unblock it).

Only models served by Python-backend stubs have processes to watch; for any other callee (TensorRT,
ONNX Runtime backends, inside tritonserver itself) nothing is ever reported dead.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, TypeVar

from smartedit.errors import ModelProcessDied
from smartedit.ops.health import is_alive, stubs_of
from smartedit.ops.server_state import ServerState

T = TypeVar("T")
POLL_S = 0.5
RESCAN_S = 5.0


class Callees:
    """The stub processes of the models this process calls (its siblings under one tritonserver)."""

    def __init__(self, state: ServerState, server_pid: int | None = None):
        self._state = state
        self._server_pid = server_pid or os.getppid()
        self._pids: dict[str, tuple[frozenset[int], float]] = {}  # model -> (its processes, when looked up)
        self._lock = threading.Lock()

    def pids(self, model: str) -> frozenset[int]:
        """The live processes of ``model`` (empty for a model not served by stubs); looked up again once
        one of those remembered has died (the model was replaced). A model without processes is looked
        up again only every few seconds: the lookup reads all of /proc, and the engine asks every step."""
        now = time.monotonic()
        with self._lock:
            known, looked_at = self._pids.get(model, (frozenset(), -RESCAN_S))
            if known and all(is_alive(pid) for pid in known):
                return known
            if not known and now - looked_at < RESCAN_S:
                return known
            found = frozenset(pid for pid, name in stubs_of(self._server_pid).items() if name == model)
            self._pids[model] = (found, now)
            return found

    def died(self, pids: frozenset[int]) -> bool:
        """Whether one of these processes is gone: what a wait for an answer watches. (Not whether the model
        is being replaced: the call may be to its new, live process.)"""
        return any(not is_alive(pid) for pid in pids)

    def lost(self, model: str, pids: frozenset[int]) -> bool:
        """Whether a call to ``model`` that failed, made while ``pids`` were its processes, failed because the
        model lost its process: one of them is gone, or the model is being replaced (a call to a model being
        reloaded fails with "not ready")."""
        return self.died(pids) or self._state.recovering() == model

    def explain(self, model: str, pids: frozenset[int], error: Exception) -> Exception:
        """``error``, a failed call to ``model``, as the client should see it: ``ModelProcessDied`` when the
        model lost its process (``lost``), else itself."""
        return ModelProcessDied(model) if self.lost(model, pids) else error

    def wait(self, model: str, work: Callable[[], T], failed: Callable[[T], bool] | None = None,
             poll_s: float = POLL_S) -> T:
        """``work()`` (a BLS exchange with ``model``), or ``ModelProcessDied`` as soon as a process that
        ``model`` had when it started is gone. A failure of ``work`` -- raised, or a result that
        ``failed`` says is one -- is ``ModelProcessDied`` too when the model lost its process or is being
        replaced (a call to a model being reloaded fails with "not ready")."""
        pids = self.pids(model)
        if not pids:
            outcome = {"value": None}
            try:
                outcome["value"] = work()
            except Exception as error:
                raise self.explain(model, pids, error) from error
        else:
            outcome = {}
            done = threading.Event()

            def run():
                try:
                    outcome["value"] = work()
                except BaseException as error:  # handed to the waiting thread
                    outcome["error"] = error
                done.set()

            threading.Thread(target=run, name=f"bls-{model}", daemon=True).start()
            while not done.wait(poll_s):
                if self.died(pids):
                    raise ModelProcessDied(model)
            if "error" in outcome:
                raise self.explain(model, pids, outcome["error"])
        if failed is not None and failed(outcome["value"]) and self.lost(model, pids):
            raise ModelProcessDied(model)
        return outcome["value"]
