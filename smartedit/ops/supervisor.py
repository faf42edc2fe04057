"""``smartedit serve``'s core: run tritonserver, keep its promises, stop it cleanly.

What Triton 2.51 does not do for itself, done here:

- **A model process that dies is replaced in seconds.** Triton never restarts a Python-backend stub
  and keeps answering "ready" while every request to its model fails. Every half second the
  supervisor counts the stubs (``smartedit.ops.health.StubCensus``); when one is gone it marks the model
  "recovering" in the server's shared state (edits that fail meanwhile are answered UNAVAILABLE:
  send again), closes the readiness gate (Triton's ready endpoint answers "not ready"), unloads and
  loads that model alone (explicit model control), proves the server edits again with one small
  edit, and opens the gate. Restarting the whole tritonserver remains the fallback: when the
  reload or the proving edit fails, or tritonserver itself died.
- **A stop drains first** (``smartedit.ops.drain``): the first SIGTERM or Ctrl-C stops admission
  and waits for every admitted edit; a second one stops them now. ``smartedit drain`` (SIGUSR1)
  drains without stopping, for the chart's preStop; the SIGTERM that follows stops at once.

Events (model process replaced, server restarted, drain) are logged as JSON lines and counted in
the shared state, where the ``server_info`` model publishes them as Prometheus counters.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from smartedit.ops.health import StubCensus
from smartedit.ops.drain import DRAIN_SIGNAL, drained_marker, run_drain
from smartedit.ops.health import READINESS_GATE
from smartedit.ops.model_control import ModelControlError, ReadinessGate
from smartedit.ops.server_state import ServerState
from smartedit.ops.server import ServerFailed, StartInterrupted, TlsFiles, TritonServer
from smartedit.serving.structured_log import JsonLineFormatter

log = logging.getLogger("smartedit.serve")

# Long enough for a real model's first-call set-up; short enough that a server which hangs on its first
# edit (seen, rarely, after a restart on Triton 2.51) is restarted again within the minute.
WARM_UP_TIMEOUT_S = 20.0
# A tritonserver that keeps dying is not restarted for ever: past this many restarts within the window
# `smartedit serve` exits non-zero, so that what supervises it (Kubernetes, systemd) sees the failure.
MAX_RESTARTS, RESTART_WINDOW_S = 5, 600.0
WATCH_INTERVAL_S = 0.5  # a dead model process is noticed within this (the ready endpoint lies until then)
# Once drained, tritonserver has nothing in flight: its own exit wait only covers idle HTTP connections.
TRITON_EXIT_TIMEOUT_S = 5


def event_logger() -> logging.Logger:
    """JSON lines for the events a log pipeline counts (``event``: drain, model_process_replaced, ...)."""
    logger = logging.getLogger("smartedit.serve.events")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLineFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def warm_up(server: TritonServer, tls: TlsFiles | None) -> bool:
    """One small edit per pipeline: before saying "serving" (the first edit pays for every model's
    first-call set-up, so that a client's need not), and to prove a repaired server edits. Whether they
    succeeded."""
    from PIL import Image

    from smartedit_client import InpaintClient, SmartEditError

    image = Image.new("RGB", (64, 64), (128, 128, 128))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    started = time.perf_counter()
    try:
        with InpaintClient(server.address.local_grpc, timeout_s=WARM_UP_TIMEOUT_S,
                           root_certificates=tls.cert if tls else None) as client:
            for pipeline in client.server_info().pipelines:
                client.inpaint(image=image, mask_image=mask, prompt="warm-up", num_inference_steps=2, seed=0,
                               pipeline=pipeline, request_id="smartedit-warm-up")
    except (SmartEditError, ValueError) as error:  # a server that cannot edit will say so to its clients too
        log.warning("warm-up edit failed: %s", error)
        return False
    log.info("warmed up with one edit per pipeline in %.2f s", time.perf_counter() - started)
    return True


class Supervisor:
    """Runs one tritonserver (started in explicit model-control mode) until told to stop.

    Args:
        server: the server to run (``model_control=True``).
        tls: the server's TLS files, for the warm-up edits.
        ready_timeout_s: how long the models may take to load, at start and after a restart.
        drain_timeout_s: how long a drain waits for the edits in flight before it stops them.
    """

    def __init__(self, server: TritonServer, *, tls: TlsFiles | None, ready_timeout_s: float,
                 drain_timeout_s: float):
        self.server = server
        self.tls = tls
        self.ready_timeout_s = ready_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.stop = threading.Event()  # the first SIGTERM / Ctrl-C
        self.now = threading.Event()  # the second: stop the edits in flight
        self._drain_asked = threading.Event()  # SIGUSR1 (smartedit drain)
        self._wake = threading.Event()
        self._drained = False
        self._drained_clean = False  # drained with nothing left in flight: tritonserver may be killed
        self._restarts: list[float] = []
        self._events = event_logger()
        self.gate: ReadinessGate | None = None
        self._state: ServerState | None = None

    # --- signals -----------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Before the launch, so that a signal at any moment, model loading included, is heard."""
        for signum in (signal.SIGINT, signal.SIGTERM, DRAIN_SIGNAL):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if signum == DRAIN_SIGNAL:
            log.info("%s received: draining (no new edits; the edits in flight finish), then waiting to be stopped",
                     name)
            self._drain_asked.set()
        elif self.stop.is_set():
            log.info("%s received again: stopping the edits in flight now", name)
            self.now.set()
        else:
            log.info("%s received: draining (no new edits; the %d s drain timeout lets the edits in flight finish), "
                     "then stopping tritonserver; %s again stops them now",
                     name, self.drain_timeout_s, "Ctrl-C" if signum == signal.SIGINT else name)
            self.stop.set()
        self._wake.set()

    # --- the run -----------------------------------------------------------------------------------

    @property
    def state(self) -> ServerState:
        """The shared state of the tritonserver started last."""
        return self._state

    def _start_server(self) -> None:
        self.server.start()
        # Named now, while the process runs: by its pid and its start time.
        self._state = ServerState.of_server(self.server.process.pid)

    def run(self, on_serving=None) -> int:
        """Start, serve until stopped, drain, stop. The exit code of ``smartedit serve``.

        Raises:
            ServerFailed: tritonserver would not start, or kept dying.
        """
        self._start_server()
        try:
            try:
                self._become_ready(first=True)
            except StartInterrupted as interrupted:
                log.info("tritonserver %s", interrupted)
                return 0
            if on_serving is not None:
                on_serving()
            self._watch()
            self._drain()
        finally:
            code = self.server.stop(timeout_s=TRITON_EXIT_TIMEOUT_S + 30.0, drained=self._drained_clean)
            self._forget_state()
            log.info("tritonserver stopped (exit code %s%s)", code,
                     "; killed once drained" if self._drained_clean else "")
        return 0

    def _become_ready(self, first: bool) -> None:
        """Wait for the models, open the gate (it loads with them, so that Triton accepts it later),
        warm up."""
        self.server.wait_until_ready(self.ready_timeout_s, stop=self.stop)
        control = self.server.model_control()
        self.gate = ReadinessGate(control, self.server.gate_repository,
                                  (self.server.address.local_http_host, self.server.address.http_port))
        self.gate.open()
        if not warm_up(self.server, self.tls) and not first:
            raise _Broken("the warm-up edit after the restart failed")

    def _forget_state(self) -> None:
        if self._state is not None:
            self._state.remove()
            self._state = None

    # --- watching ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Until asked to stop: replace dead model processes, restart a dead tritonserver, drain on
        SIGUSR1 (and stay up, not ready, until stopped)."""
        # One census for the server's life: a process that dies while another is being replaced is still
        # missed by the count; only the replaced models are counted again (a restart counts all).
        census = self._census()
        while not self.stop.is_set():
            self._wake.wait(WATCH_INTERVAL_S)
            self._wake.clear()
            if self.stop.is_set():
                return
            if self._drain_asked.is_set() and not self._drained:
                self._drain()
                continue
            if self._drained:
                continue  # nothing to repair: it takes no edits and only waits to be stopped
            try:
                if self.server.process.poll() is not None:
                    raise _Broken(f"tritonserver exited with code {self.server.process.returncode}")
                dead = census.dead_models()
                if dead:
                    self._replace(dead, census.dead())
                    census.recount(dead)
            except _Broken as broken:
                if not self._restart(str(broken)):
                    return  # told to stop while it restarted
                census = self._census()

    def _census(self) -> StubCensus:
        return StubCensus(self.server.process.pid, ignore=frozenset({READINESS_GATE}))

    def _replace(self, models: list[str], described: list[str]) -> None:
        """Reload the models whose process died, readiness held down meanwhile.

        Raises:
            _Broken: the reload or the proving edit failed (then tritonserver is restarted).
        """
        started = time.monotonic()
        reason = f"model process died: {', '.join(described)}"
        state = self.state
        for model in models:
            state.mark_recovering(model)
        self.gate.close(f"replacing the process of {', '.join(models)}")
        # Logged once readiness is held down: from this line on, nothing may report the server ready
        # until the new process has proven itself (tests/test_recovery.py reads it so).
        log.error("%s; readiness held down, replacing it (Triton does not recover by itself)", reason)
        control = self.server.model_control()
        try:
            for model in models:
                control.reload(model)
            # Its new process answers from here on: a call that fails now is not the dead one's.
            state.clear_recovering()
            if not warm_up(self.server, self.tls):
                raise _Broken(f"{reason}; the edit after reloading {', '.join(models)} failed")
            self.gate.open()
        except ModelControlError as error:
            raise _Broken(f"{reason}; reloading it failed: {error}") from None
        finally:
            state.clear_recovering()
        took = time.monotonic() - started
        for model in models:
            state.count_event("model_process_replaced", model)
            self._events.info("model process replaced", extra={"fields": {
                "event": "model_process_replaced", "model": model, "took_s": round(took, 3),
                "reason": reason}})
        log.info("%s: edits are served again (%.1f s)", ", ".join(models), took)

    def _restart(self, reason: str) -> bool:
        """The fallback: stop tritonserver and start it again (every model loads again). Whether it is
        serving again (False: told to stop while its models loaded).

        Raises:
            ServerFailed: it has been restarted ``MAX_RESTARTS`` times within the window already.
        """
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(self._restarts) > MAX_RESTARTS:
            raise ServerFailed(f"{reason}; {MAX_RESTARTS} restarts in the last {RESTART_WINDOW_S:.0f} s already: "
                               f"giving up")
        log.error("%s; restarting tritonserver", reason)
        started = time.monotonic()
        self.server.stop(timeout_s=5.0)  # edits in flight fail now rather than against a broken server
        self._forget_state()
        self._start_server()
        try:
            self._become_ready(first=False)
        except StartInterrupted:
            return False
        except (_Broken, ModelControlError) as broken:
            return self._restart(str(broken))
        self.state.count_event("server_restarted", "tritonserver")
        self._events.info("tritonserver restarted", extra={"fields": {
            "event": "server_restarted", "reason": reason, "took_s": round(time.monotonic() - started, 3)}})
        log.info("tritonserver restarted and ready")
        return True

    # --- draining ----------------------------------------------------------------------------------

    def _drain(self) -> None:
        if self._drained:
            if self.now.is_set():
                self.state.start_drain(0.0)
            return
        state = self.state
        state.count_event("drain", "")  # now: published while the server still runs
        report = run_drain(state, self.gate.close if self.gate else None, self.drain_timeout_s, self.now,
                           alive=lambda: self.server.process.poll() is None)
        self._drained = True
        self._drained_clean = report.left_unanswered == 0
        drained_marker(state).touch()
        self._events.info("drained", extra={"fields": {"event": "drain", **report.fields()}})
        if report.left_unanswered:
            log.warning("gave up on %d requests still in flight after the drain timeout", report.left_unanswered)
        else:
            log.info("drained in %.1f s: every admitted request was answered", report.duration_s)


class _Broken(Exception):
    """tritonserver must be restarted (why: the message)."""
