"""A stop that keeps its promise: ``smartedit serve`` drains before tritonserver stops.

Each test starts its own ``smartedit serve`` on the tiny model, runs edits of several seconds, and
signals it as Kubernetes (SIGTERM), a terminal (Ctrl-C) or the chart's preStop (``smartedit drain``)
would. Before the drain, every edit in flight failed ("Server not ready") and tritonserver hung for
its exit timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import pytest

from conftest import read_until_serving, scene
from smartedit.ops.health import http_status
from smartedit.ops.server import free_port
from smartedit_client import (InpaintClient, ProgressEvent, RequestCancelledError, ServerUnavailableError,
                              SmartEditError)

pytestmark = pytest.mark.functional

# 256x256 photos (32x32 latents) at 60 steps: about 4 s for four edits side by side on 2 cores.
SIZE, STEPS = 256, 60


@dataclass
class Served:
    process: subprocess.Popen
    grpc: int
    http: int
    metrics: int
    output: list = field(default_factory=list)  # serve's lines after "serving"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def ready(self) -> int | None:
        return http_status("127.0.0.1", self.http, "/v2/health/ready", 1.0)

    def wait(self, timeout_s: float) -> int:
        code = self.process.wait(timeout=timeout_s)
        self.output.append(self.process.stdout.read())
        return code

    def log(self) -> str:
        return "".join(self.output)


def start_serve(model_repository, tmp_path, *extra: str) -> Served:
    grpc, http, metrics = free_port(), free_port(), free_port()
    command = [sys.executable, "-m", "smartedit", "serve", "--model-repository", str(model_repository),
               "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics),
               "--log-file", str(tmp_path / "triton.log"), "--no-restrict", *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    served = Served(process, grpc, http, metrics)
    lines = read_until_serving(process)
    assert "SmartEdit is serving" in lines[-1], "".join(lines)
    assert served.ready() == 200  # "serving" means ready
    return served


@pytest.fixture
def serve_factory(model_repository, tmp_path):
    started = []

    def start(*extra):
        served = start_serve(model_repository, tmp_path, *extra)
        started.append(served)
        return served

    yield start
    for served in started:
        if served.process.poll() is None:
            served.process.kill()
            served.process.wait()


class Edits:
    """Unary and streamed edits running in threads; each one's outcome and end time."""

    def __init__(self, address: str, steps: int = STEPS):
        self.address, self.steps = address, steps
        self.image, self.mask = scene(SIZE, SIZE)
        self.outcomes: dict[str, object] = {}
        self.ended: dict[str, float] = {}
        self.progress = threading.Event()  # the stream has reported a step
        self._threads: list[threading.Thread] = []

    def start(self, unary: int, streamed: int) -> "Edits":
        for index in range(unary):
            self._run(f"unary {index}", self._unary, index)
        for index in range(streamed):
            self._run(f"stream {index}", self._stream, 100 + index)
        return self

    def _run(self, name, function, seed):
        def record():
            try:
                self.outcomes[name] = function(seed)
            except SmartEditError as error:
                self.outcomes[name] = error
            self.ended[name] = time.monotonic()
        thread = threading.Thread(target=record)
        thread.start()
        self._threads.append(thread)

    def _unary(self, seed):
        with InpaintClient(self.address, timeout_s=120) as client:
            return client.inpaint(image=self.image, mask_image=self.mask, prompt="a cat", seed=seed,
                                  num_inference_steps=self.steps).image

    def _stream(self, seed):
        with InpaintClient(self.address, timeout_s=120) as client:
            with client.inpaint_stream(image=self.image, mask_image=self.mask, prompt="a cat", seed=seed,
                                       num_inference_steps=self.steps, preview_every=0) as stream:
                result = None
                for event in stream:
                    if isinstance(event, ProgressEvent):
                        self.progress.set()
                    else:
                        result = event
                return result.image

    def join(self, timeout_s: float = 120) -> None:
        for thread in self._threads:
            thread.join(timeout_s)

    def assert_all_edited(self) -> None:
        """Every edit answered with an image whose unmasked pixels are the photo's own."""
        keep = np.array(self.mask) == 0
        photo = np.array(self.image)
        for name, outcome in self.outcomes.items():
            assert not isinstance(outcome, Exception), f"{name}: {outcome!r}"
            pixels = np.array(outcome.convert("RGB"))
            assert pixels.shape == photo.shape and (pixels[keep] == photo[keep]).all(), name


def watch_readiness(served: Served, stop: threading.Event) -> list:
    """(seconds, status) of Triton's ready endpoint every 0.1 s until ``stop`` or the process ends."""
    seen = []

    def poll():
        started = time.monotonic()
        while not stop.is_set() and served.process.poll() is None:
            seen.append((time.monotonic() - started, served.ready()))
            time.sleep(0.1)
    threading.Thread(target=poll, daemon=True).start()
    return seen


def refused_at_once(address: str) -> tuple[SmartEditError, float]:
    image, mask = scene(64, 64)
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError) as refused:
        with InpaintClient(address, timeout_s=30) as client:
            client.inpaint(image=image, mask_image=mask, prompt="too late", num_inference_steps=2, seed=1)
    return refused.value, time.monotonic() - started


def test_a_stop_finishes_every_edit_in_flight_refuses_new_ones_and_exits_0(serve_factory):
    # SIGTERM here; Ctrl-C (SIGINT), which the supervisor handles alike, starts the drain in the next test (each of
    # these costs a server's start: ~100 s of CI).
    signum = signal.SIGTERM
    served = serve_factory()
    edits = Edits(served.address).start(unary=3, streamed=1)
    assert edits.progress.wait(30)
    time.sleep(1.0)
    assert not edits.outcomes, "the edits should take longer than this"
    served.process.send_signal(signum)
    stop_watching = threading.Event()
    readiness = watch_readiness(served, stop_watching)
    time.sleep(0.3)

    error, took_s = refused_at_once(served.address)
    assert "server is shutting down" in str(error)
    # At once, not queued behind the drain: refused while every edit admitted before the signal still runs.
    assert not edits.outcomes, f"refused only after {len(edits.outcomes)} edits in flight ended ({took_s:.1f} s)"

    edits.join()
    last_edit_ended = max(edits.ended.values())
    code = served.wait(timeout_s=60)
    exited_after_s = time.monotonic() - last_edit_ended
    stop_watching.set()
    edits.assert_all_edited()
    assert len(edits.outcomes) == 4
    assert code == 0, served.log()
    # Not after Triton's own exit timeout (it waits out open connections): stopped as soon as drained.
    assert "killed once drained" in served.log(), served.log()
    # At once: from the first poll after the signal was handled (a fraction of a second) to the exit.
    during = [status for at, status in readiness if at >= 0.2]
    assert during and 200 not in during, readiness
    assert '"event": "drain"' in served.log() and '"left_unanswered": 0' in served.log(), served.log()
    print(f"{signal.Signals(signum).name}: 4 edits answered, a new one refused in {took_s:.2f} s, exit 0 "
          f"{exited_after_s:.1f} s after the last edit; readiness during the drain: {sorted(set(during), key=str)}")


def test_a_second_signal_stops_the_edits_in_flight_at_once(serve_factory):
    served = serve_factory()
    edits = Edits(served.address, steps=500).start(unary=1, streamed=1)  # minutes of work
    assert edits.progress.wait(30)
    served.process.send_signal(signal.SIGINT)  # Ctrl-C: a drain, as SIGTERM
    time.sleep(1.0)
    assert not edits.outcomes  # the first signal lets them run
    served.process.send_signal(signal.SIGTERM)
    edits.join(60)  # minutes of steps left: both answered within it only if stopped, as the message says
    code = served.wait(timeout_s=60)
    assert len(edits.outcomes) == 2
    for name, outcome in edits.outcomes.items():
        assert isinstance(outcome, RequestCancelledError), f"{name}: {outcome!r}"
        assert "the server was told to stop now" in str(outcome), str(outcome)
    assert code == 0, served.log()
    assert "SIGINT received: draining" in served.log(), served.log()  # Ctrl-C drained, as SIGTERM does


def test_the_drain_timeout_stops_edits_that_outlast_it(serve_factory):
    served = serve_factory("--drain-timeout", "2")
    edits = Edits(served.address, steps=500).start(unary=1, streamed=0)
    time.sleep(2.0)
    served.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    edits.join(60)
    assert served.wait(timeout_s=60) == 0, served.log()
    (outcome,) = edits.outcomes.values()
    assert isinstance(outcome, RequestCancelledError), repr(outcome)
    assert "the server shut down before the edit finished" in str(outcome), str(outcome)
    # Stopped by the timeout, not at the signal (its message above says it was not left to finish).
    assert max(edits.ended.values()) - signalled > 1.5


def test_smartedit_drain_finishes_the_edits_then_the_server_waits_to_be_stopped(serve_factory):
    """The chart's preStop: ``smartedit drain`` returns once the server is drained; the SIGTERM the kubelet
    sends next stops it at once."""
    served = serve_factory()
    edits = Edits(served.address).start(unary=1, streamed=1)
    assert edits.progress.wait(30)
    started = time.monotonic()
    tritonserver = subprocess.run(["pgrep", "-P", str(served.process.pid), "tritonserver"], capture_output=True,
                                  text=True).stdout.split()[0]
    drained = subprocess.run([sys.executable, "-m", "smartedit", "drain", "--pid", tritonserver, "--wait", "120"],
                             capture_output=True, text=True, timeout=150)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    drain_took_s = time.monotonic() - started
    edits.join()
    edits.assert_all_edited()
    assert served.process.poll() is None  # still up: not ready, refusing, until told to stop
    assert served.ready() != 200
    # Published as metrics (server_info, every 2 s): draining, nothing left in flight, one drain counted.
    deadline, published = time.monotonic() + 10, ""
    while time.monotonic() < deadline and "smartedit_requests_in_flight 0" not in published:
        published = urllib.request.urlopen(f"http://127.0.0.1:{served.metrics}/metrics", timeout=10).read().decode()
        time.sleep(0.5)
    ours = [line for line in published.splitlines() if line.startswith(("smartedit_draining", "smartedit_requests_in",
                                                                          "smartedit_ops"))]
    assert "smartedit_draining 1" in ours and "smartedit_requests_in_flight 0" in ours, ours
    assert 'smartedit_ops_events_total{event="drain",model=""} 1' in published
    error, _ = refused_at_once(served.address)
    assert "server is shutting down" in str(error)
    served.process.send_signal(signal.SIGTERM)
    assert served.wait(timeout_s=60) == 0, served.log()
    assert "killed once drained" in served.log(), served.log()
    print(f"smartedit drain took {drain_took_s:.1f} s")
