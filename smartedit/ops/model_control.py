"""Triton's model-repository API, and the readiness gate built on it.

``smartedit serve`` starts tritonserver in explicit model-control mode (every model loaded at start),
so that it can replace one model whose process died -- unload it, load it again: seconds, where a
restart of tritonserver reloads every model -- and so that it can make Triton's own ready endpoint
answer "not ready" while it drains or repairs.

Triton 2.51 has no API for that last part, but its strict readiness is false while any model is
loading or failed to load (a model *unloaded* on purpose does not count). The gate is a model of
SmartEdit's own, in a repository of its own, whose load fails while a flag file beside it exists:

    close(reason): write the flag, ask Triton to load the gate: LOADING, then failed -- not ready
                   from the moment Triton takes the request, for as long as it stays failed
    open():        remove the flag, load the gate (it succeeds), unload it: ready again once the
                   gate's process has exited (about a second)

(Unloading the failed gate is not enough: Triton keeps its failure as its state.)
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from smartedit.ops.health import ADMIN_KEY_HEADER, READINESS_GATE, http_status

_GATE_FLAG = "closed"
_GATE_CONFIG = """\
# SmartEdit's readiness gate (smartedit.ops.model_control): not a model of the pipeline.
backend: "python"
max_batch_size: 0
input [{ name: "unused" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "unused_out" data_type: TYPE_INT32 dims: [1] }]
"""
_GATE_MODEL = '''\
"""SmartEdit's readiness gate: its load fails while the file ``closed`` exists beside this version folder,
which keeps Triton's strict readiness false (smartedit.ops.model_control)."""
from pathlib import Path


class TritonPythonModel:
    def initialize(self, args):
        flag = Path(args["model_repository"]) / "closed"
        if flag.exists():
            raise RuntimeError(f"not ready on purpose: {flag.read_text().strip()}")

    def execute(self, requests):
        return []
'''


class ModelControlError(RuntimeError):
    """Triton refused or failed a model-repository request."""


class ModelControl:
    """Load and unload models of a tritonserver (explicit model-control mode) over its HTTP endpoint.

    A fresh connection per request, closed at once: tritonserver waits for open HTTP connections
    before it exits. Each request runs in a helper thread while the caller watches ``alive``: a
    tritonserver that dies in the middle of a load (or hangs in its crash handler) fails the call at
    once instead of after the network timeout.
    """

    def __init__(self, http_address: str, admin_key: str | None = None, timeout_s: float = 600.0,
                 alive: Callable[[], bool] = lambda: True):
        self.http_address = http_address
        self._headers = {ADMIN_KEY_HEADER: admin_key} if admin_key else None
        self._timeout_s = timeout_s
        self._alive = alive

    def _request(self, name: str, *args, **kwargs):
        """``InferenceServerClient.<name>(*args, **kwargs)`` on a connection of its own.

        Raises:
            ModelControlError: Triton refused or failed it, did not answer, or exited meanwhile.
        """
        outcome: dict = {}
        done = threading.Event()

        def call():
            import tritonclient.http as triton_http
            from tritonclient.utils import InferenceServerException

            try:
                client = triton_http.InferenceServerClient(self.http_address, connection_timeout=10.0,
                                                           network_timeout=self._timeout_s)
                try:
                    outcome["value"] = getattr(client, name)(*args, headers=self._headers, **kwargs)
                finally:
                    client.close()
            except InferenceServerException as error:
                outcome["error"] = ModelControlError(error.message() or str(error))
            except Exception as error:  # refused, reset, closed (OSError, geventhttpclient's own errors)
                outcome["error"] = ModelControlError(f"tritonserver's HTTP endpoint at {self.http_address} did not "
                                                     f"answer: {type(error).__name__}: {error}")
            done.set()

        threading.Thread(target=call, name=f"model-control-{name}", daemon=True).start()
        while not done.wait(0.2):
            if not self._alive():
                raise ModelControlError(f"tritonserver exited during {name}")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    def load(self, model: str) -> None:
        """Load (or load again) ``model``; returns once it is ready.

        Raises:
            ModelControlError: the load failed (the message is Triton's).
        """
        self._request("load_model", model)

    def unload(self, model: str) -> None:
        """Ask Triton to unload ``model``; it goes on in the background until its requests are done."""
        self._request("unload_model", model)

    def reload(self, model: str) -> None:
        """Replace ``model``'s processes: unload it, then load it again (Triton keeps a model whose files
        did not change as it is on a plain load)."""
        self.unload(model)
        self.load(model)

    def states(self) -> dict[str, str]:
        """Each model of the repositories: its state ("READY", "UNAVAILABLE", "LOADING", ...)."""
        return {entry["name"]: entry.get("state", "") for entry in self._request("get_model_repository_index")}


def write_gate_repository(folder: Path) -> Path:
    """The repository holding only the gate, written (open) under ``folder``; its path."""
    repository = Path(folder) / "gate-repository"
    model = repository / READINESS_GATE
    shutil.rmtree(model, ignore_errors=True)
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(_GATE_CONFIG)
    (model / "1" / "model.py").write_text(_GATE_MODEL)
    return repository


class ReadinessGate:
    """Makes Triton's ready endpoint answer "not ready" on purpose (see the module docstring).

    Args:
        control: the server's model control.
        repository: the gate's repository (``write_gate_repository``), one of the server's repositories.
        ready_address: ``(host, http_port)`` where Triton's ready endpoint answers, to see the gate act.
    """

    def __init__(self, control: ModelControl, repository: Path, ready_address: tuple[str, int]):
        self._control = control
        self._flag = Path(repository) / READINESS_GATE / _GATE_FLAG
        self._ready_address = ready_address
        self._loading: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._flag.exists()

    def ready(self) -> bool:
        host, port = self._ready_address
        return http_status(host, port, "/v2/health/ready", 2.0) == 200

    def close(self, reason: str, settle_s: float = 5.0) -> None:
        """Not ready from now on, until ``open()``; returns once Triton says so (or after ``settle_s``)."""
        with self._lock:
            self._flag.write_text(reason + "\n")
            self._join()
            # The load fails after the gate's process starts (a second or two), but Triton is not ready
            # from the moment it takes the request: wait for that, not for the failure.
            self._loading = threading.Thread(target=self._load_closed, name="readiness-gate", daemon=True)
            self._loading.start()
            deadline = time.monotonic() + settle_s
            while self.ready() and time.monotonic() < deadline and self._loading.is_alive():
                time.sleep(0.01)

    def _load_closed(self) -> None:
        try:
            self._control.load(READINESS_GATE)
        except ModelControlError:
            pass  # the point: the gate failed to load

    def open(self, settle_s: float = 10.0) -> None:
        """Ready again; returns once Triton says so (the gate's process takes about a second to exit), or
        after ``settle_s`` (another model may be what keeps it from being ready).

        Raises:
            ModelControlError: Triton would not load or unload the gate.
        """
        with self._lock:
            self._join()
            self._flag.unlink(missing_ok=True)
            self._control.load(READINESS_GATE)
            self._control.unload(READINESS_GATE)
            deadline = time.monotonic() + settle_s
            while not self.ready() and time.monotonic() < deadline:
                time.sleep(0.05)

    def _join(self) -> None:
        if self._loading is not None:
            self._loading.join()
            self._loading = None
