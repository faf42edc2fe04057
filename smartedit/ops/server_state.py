"""What the processes of one tritonserver share about its state: a drain, a model process being
replaced, and the requests in flight.

``smartedit serve`` (the supervisor) and the Python models run in different processes, and Triton
offers no channel between them, so they meet in a folder, as the cancel board does
(``smartedit.engine.cancellation``), named by the tritonserver's pid and start time (every Python model is
its child; the start time, because a container restarted in its pod gets /dev/shm back and, in a new
pid namespace, most likely the same pid: its new server must not inherit a drain or a repair):

    <root>/smartedit-state-<pid>-<start time>/
        draining          JSON {"since", "cancel_at", "at_once"}: new requests are refused with UNAVAILABLE
                          "server is shutting down"; edits still running at ``cancel_at`` are stopped
        recovering        JSON {"model", "since"}: that model's process died and is being replaced;
                          a request that fails meanwhile is told to retry (UNAVAILABLE)
        in-flight/<token> one per admitted request, holding the time past which it cannot be running
                          any more (its deadline): the drain waits until none is left
        events.json       {"<event> <model>": count}: drains, model processes replaced, restarts
                          (the supervisor counts them; ``server_info`` publishes them as metrics)

The ledger is what lets the supervisor wait for the unary ensemble: Triton knows when an ensemble
request ends, but does not say, and once tritonserver is told to stop its models refuse the
ensemble's next steps and every BLS call. So every entry point records a request before it checks
for a drain, and the drain sets its flag before it reads the ledger: a request either sees the flag
and is refused, or is seen in flight and waited for.

``<root>`` is ``/dev/shm`` where it is writable (memory; a check is one ``stat``), else the temp folder.
Stdlib only: the health probe and the drain command import it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from smartedit.ops.health import start_time

_SHARED_MEMORY = Path("/dev/shm")
PREFIX = "smartedit-state-"
SHUTTING_DOWN = "server is shutting down"  # the refusal's fixed words, which clients may show as they are
# An entry without a deadline of its own is assumed gone after this long.
UNBOUNDED_REQUEST_S = 3600.0
# A unary edit's entry lasts this long between the steps that can see it: preprocess to the denoising
# step (the encoders run between), and the denoising step to postprocess (the decoder). An ensemble that
# fails in a component step between them leaves its entry behind, and a drain must not wait for it
# until the edit's deadline.
BETWEEN_STEPS_S = 120.0


def shared_root() -> Path:
    if _SHARED_MEMORY.is_dir() and os.access(_SHARED_MEMORY, os.W_OK):
        return _SHARED_MEMORY
    return Path(tempfile.gettempdir())


def _folder_name(server_pid: int) -> str:
    return f"{PREFIX}{server_pid}-{start_time(server_pid)}"


def remove_folders_of_dead_servers(root: Path) -> None:
    """A server that was killed (SIGKILL, the OOM killer) left its folder behind: remove those."""
    for folder in root.glob(f"{PREFIX}*"):
        pid, _, started = folder.name[len(PREFIX):].partition("-")
        if pid.isdigit() and (start_time(int(pid)) or "gone") != started:
            shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class Drain:
    """A drain in progress: ``since`` it started; edits still running at ``cancel_at`` are stopped, because
    its timeout passed or (``at_once``) it was told to stop them now."""

    since: float
    cancel_at: float
    at_once: bool = False

    def cancel_reason(self, now: float) -> str | None:
        if now < self.cancel_at:
            return None
        if self.at_once:
            return "the server was told to stop now, before the edit finished"
        return (f"the server shut down before the edit finished (it waited {self.cancel_at - self.since:.0f} s "
                f"for the edits in flight)")


class ServerState:
    """The shared state of one tritonserver (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._in_flight = self.folder / "in-flight"
        self._in_flight.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of_server(cls, server_pid: int) -> "ServerState":
        return cls(shared_root() / _folder_name(server_pid))

    @classmethod
    def of_this_server(cls) -> "ServerState":
        """The state of the tritonserver that started this Python-backend process."""
        root = shared_root()
        remove_folders_of_dead_servers(root)
        return cls(root / _folder_name(os.getppid()))

    def remove(self) -> None:
        """Once the server has stopped: nothing of it is left in memory."""
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- drain -----------------------------------------------------------------------------------

    def start_drain(self, timeout_s: float, now: float | None = None) -> Drain:
        """Refuse new requests from now on; stop edits still running after ``timeout_s`` (0: now). Again
        during a drain, it keeps the earlier start and the earlier stop."""
        now = time.time() if now is None else now
        current = self.drain()
        drain = Drain(since=now, cancel_at=now + timeout_s, at_once=timeout_s <= 0)
        if current is not None:
            drain = current if current.cancel_at <= drain.cancel_at else Drain(current.since, drain.cancel_at,
                                                                               drain.at_once)
        self._write("draining", {"since": drain.since, "cancel_at": drain.cancel_at, "at_once": drain.at_once})
        return drain

    def drain(self) -> Drain | None:
        data = self._read("draining")
        return None if data is None else Drain(float(data["since"]), float(data["cancel_at"]),
                                               bool(data.get("at_once")))

    def refusal(self) -> str | None:
        """Why a new request is refused now (UNAVAILABLE), or None."""
        return f"{SHUTTING_DOWN}: it finishes the edits in flight and takes no new ones; retry on another server" \
            if (self.folder / "draining").exists() else None

    def cancel_reason(self, now: float | None = None) -> str | None:
        """Why an edit still running must stop now (the drain's timeout has passed), or None."""
        if not (self.folder / "draining").exists():  # one stat per check: the engine asks every step
            return None
        drain = self.drain()
        return None if drain is None else drain.cancel_reason(time.time() if now is None else now)

    # --- a model process being replaced ----------------------------------------------------------

    def mark_recovering(self, model: str) -> None:
        self._write("recovering", {"model": model, "since": time.time()})

    def recovering(self) -> str | None:
        """The model whose process is being replaced, or None."""
        data = self._read("recovering")
        return None if data is None else str(data["model"])

    def clear_recovering(self) -> None:
        (self.folder / "recovering").unlink(missing_ok=True)

    # --- events the supervisor counts --------------------------------------------------------------

    def count_event(self, event: str, model: str = "") -> None:
        """One more ``event`` (of ``model``); only the supervisor writes these."""
        counts = self.events()
        key = f"{event} {model}".strip()
        counts[key] = counts.get(key, 0) + 1
        self._write("events.json", counts)

    def events(self) -> dict[str, int]:
        """``{"<event> <model>": count}`` (the model part absent for events of no model)."""
        return {str(key): int(value) for key, value in (self._read("events.json") or {}).items()}

    # --- the requests in flight ------------------------------------------------------------------

    def begin(self, token: str, deadline: float = 0.0) -> None:
        """Record a request as in flight until ``end(token)`` or its ``deadline`` (``time.time()``; 0: none)."""
        self.extend(token, deadline if deadline else time.time() + UNBOUNDED_REQUEST_S)

    def extend(self, token: str, until: float) -> None:
        """Count the request as in flight until ``until`` (``time.time()``), unless it ends first."""
        if token:
            self._entry(token).write_text(repr(until))

    def end(self, token: str) -> None:
        if token:
            self._entry(token).unlink(missing_ok=True)

    def in_flight(self, now: float | None = None) -> int:
        """How many recorded requests may still be running (entries past their deadline are removed)."""
        now = time.time() if now is None else now
        count = 0
        for entry in self._in_flight.iterdir():
            try:
                expiry = float(entry.read_text() or "inf")
            except (OSError, ValueError):
                continue  # ended while we looked, or still being written: counted next time
            if expiry < now:
                entry.unlink(missing_ok=True)
            else:
                count += 1
        return count

    # ---------------------------------------------------------------------------------------------

    def _entry(self, token: str) -> Path:
        if not token or not token.isalnum():  # a token names a file: nothing that could leave the folder
            raise ValueError(f"request token must be alphanumeric, got {token!r}")
        return self._in_flight / token

    def _write(self, name: str, data: dict) -> None:
        partial = self.folder / f".{name}.{os.getpid()}"
        partial.write_text(json.dumps(data))
        partial.replace(self.folder / name)  # whole or not at all: readers never see half a file

    def _read(self, name: str) -> dict | None:
        try:
            return json.loads((self.folder / name).read_text())
        except (OSError, ValueError):
            return None
