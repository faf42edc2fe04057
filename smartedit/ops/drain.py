"""Drain: finish every admitted request before tritonserver is told to stop.

Why not leave it to Triton: on SIGTERM Triton 2.51 stops every model's scheduler at once. It waits
for the requests its clients sent, but the engine's BLS calls to ``unet`` and the ensemble's next
steps are new requests to stopped models, refused with "Server not ready": every edit in flight
failed, and an open stream kept tritonserver from exiting until its exit timeout. So SmartEdit
drains first, with tritonserver still fully up:

1. the server's shared state says "draining": every entry point (the ``inpaint`` ensemble's
   preprocess, ``inpaint_stream``, ``segment``) refuses new requests at once with UNAVAILABLE
   "server is shutting down" (the SDK's ``ServerUnavailableError``: send it to another server);
2. the readiness gate closes: Triton's ``/v2/health/ready`` answers "not ready" (and with it the
   chart's readiness probe), so load balancers stop sending;
3. every request already admitted (past the entry point's check: preprocess, the stream's first
   moment) -- unary, streamed, waiting for a slot -- runs to its end and is answered; the drain waits
   until the in-flight ledger is empty (or tritonserver has died: then nothing can be running);
4. at the drain timeout, edits still running are stopped between two steps by the engine and
   answered CANCELLED "the server shut down before the edit finished"; a second Ctrl-C/SIGTERM (or
   ``now``) does the same at once.

Only then does ``smartedit serve`` stop tritonserver. ``smartedit drain`` (the chart's preStop)
asks a running ``smartedit serve`` to do steps 1-4 and waits until they are done.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

from smartedit.ops.server_state import ServerState

# After the timeout has stopped the edits still running, how long their answers may take to leave.
CANCEL_GRACE_S = 15.0
DRAIN_SIGNAL = signal.SIGUSR1  # what ``smartedit drain`` sends ``smartedit serve``


@dataclass(frozen=True)
class DrainReport:
    in_flight_at_start: int
    left_unanswered: int  # still recorded when the drain gave up (0 on a clean drain)
    cancelled_at_timeout: bool
    duration_s: float

    def fields(self) -> dict:
        return {"in_flight_at_start": self.in_flight_at_start, "left_unanswered": self.left_unanswered,
                "cancelled_at_timeout": self.cancelled_at_timeout, "duration_s": round(self.duration_s, 3)}


def run_drain(state: ServerState, close_gate, timeout_s: float, now: threading.Event,
              alive=lambda: True, poll_s: float = 0.1) -> DrainReport:
    """Steps 1-4 of the module docstring.

    Args:
        state: the server's shared state.
        close_gate: makes Triton's ready endpoint answer "not ready" (``ReadinessGate.close``), or None.
        timeout_s: how long edits in flight may take before they are stopped.
        now: set (a second signal) to stop the edits in flight at once.
        alive: whether tritonserver still runs: if it died, nothing recorded can still be running.
    """
    started = time.monotonic()
    drain = state.start_drain(timeout_s)  # first: a request recorded after this sees it and is refused
    if close_gate is not None:
        close_gate("draining: finishing the edits in flight before the server stops")
    at_start = state.in_flight()
    cancelled = False
    while (left := state.in_flight()) > 0 and alive():
        if now.is_set() and not cancelled:
            drain = state.start_drain(0.0)
        cancelled = cancelled or time.time() >= drain.cancel_at
        if time.time() >= drain.cancel_at + CANCEL_GRACE_S:
            break
        time.sleep(poll_s)
    return DrainReport(in_flight_at_start=at_start, left_unanswered=left, cancelled_at_timeout=cancelled,
                       duration_s=time.monotonic() - started)


# --- ``smartedit drain``: ask a running ``smartedit serve`` to drain --------------------------------


def drained_marker(state: ServerState):
    return state.folder / "drained"


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def request_drain(server_pid: int, wait_s: float, poll_s: float = 0.5) -> int:
    """Signal the ``smartedit serve`` that runs tritonserver ``server_pid`` to drain; wait until it has.

    Returns:
        0 once drained (or once the server is gone), 1 if it is not drained within ``wait_s``.
    """
    from smartedit.ops.health import parent_of, start_time

    state = ServerState.of_server(server_pid)
    supervisor = parent_of(server_pid)
    if supervisor is None or "smartedit" not in _command_line(supervisor):
        print(f"smartedit drain: tritonserver {server_pid} is not run by smartedit serve; nothing drains it",
              file=sys.stderr)
        return 1
    os.kill(supervisor, DRAIN_SIGNAL)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if drained_marker(state).exists() or start_time(server_pid) is None:
            print("smartedit drain: drained", flush=True)
            return 0
        time.sleep(poll_s)
    print(f"smartedit drain: still {state.in_flight()} requests in flight after {wait_s:.0f} s", file=sys.stderr)
    return 1


