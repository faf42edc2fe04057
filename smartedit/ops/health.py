"""Is every Python-backend model process of a tritonserver still alive?

Triton 2.51 never replaces a Python-backend stub that dies (server issues #7347, #8604): its model
stays "ready", ``/v2/health/ready`` keeps answering 200, and every request to the model fails with
"Stub process '<model>_0_0' is not healthy". Nothing Triton reports notices, so SmartEdit watches
the stub processes themselves: ``smartedit serve`` replaces a model whose process died
(smartedit.ops.supervisor), and the chart's readiness probe runs this module, so that Kubernetes
stops routing to the pod until it has.

    python -m smartedit.ops.health [--pid PID] [--state FILE] [--http-port 8000] [--ready | --live]

The first run records the stubs of the server (the ``tritonserver`` process, or ``--pid``) in
``--state``; every later run for the same server fails (exit 1, naming the model) while a model has
fewer live processes than were recorded (a replaced process counts as alive). Stdlib only: a probe
starts a fresh interpreter every few seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

# The model whose load fails on purpose while serve holds readiness down (smartedit.ops.model_control).
READINESS_GATE = "smartedit_readiness_gate"
# The HTTP header that carries the key of the APIs serve restricts (smartedit.ops.server).
ADMIN_KEY_HEADER = "smartedit-admin-key"
STUB_COMM = "triton_python_b"  # the kernel keeps 15 characters of "triton_python_backend_stub"


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1], start time [19])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def is_alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a dead stub lingers as a zombie


def start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return None if fields is None else fields[19]


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def stubs_of(server_pid: int) -> dict[int, str]:
    """The live Python-backend stubs of a tritonserver: pid -> model name."""
    stubs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        fields = _stat(pid)
        try:
            if fields is None or int(fields[1]) != server_pid:
                continue
            if Path(f"/proc/{pid}/comm").read_text().strip() != STUB_COMM:
                continue
            # argv[1] is the model's source: <repository>/<model>/<version>/model.py
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if is_alive(pid) and len(argv) > 1:
            stubs[pid] = Path(argv[1].decode(errors="replace")).parent.parent.name
    return stubs


def server_repositories(server_pid: int) -> list[Path]:
    """The local model repositories a tritonserver was started on (none for s3:// or gs://)."""
    try:
        argv = Path(f"/proc/{server_pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []
    prefix = "--model-repository="
    return [Path(arg[len(prefix):]) for arg in argv if arg.startswith(prefix) and "://" not in arg]


_PYTHON_BACKEND = re.compile(r'^\s*backend\s*:\s*"python"', re.MULTILINE)


def python_models(repositories: list[Path]) -> set[str]:
    """Models of these repositories that run in Python-backend stubs."""
    models = set()
    for repository in repositories:
        for config in repository.glob("*/config.pbtxt"):
            try:
                if _PYTHON_BACKEND.search(config.read_text()):
                    models.add(config.parent.name)
            except OSError:
                continue
    return models


class StubCensus:
    """The stubs a server had when counted, and the Python-backend models its repository declares.

    ``dead()`` names what has gone since: a model with fewer live stubs than were counted (its process
    died and was not replaced; ``smartedit serve`` replaces it), or a declared model with no stub at all
    (one that died before the count, or never started). Models in ``ignore`` are not watched.
    """

    def __init__(self, server_pid: int, stubs: dict[int, str] | None = None, ignore: frozenset[str] = frozenset()):
        self.server_pid = server_pid
        self.ignore = ignore
        counted = stubs_of(server_pid) if stubs is None else stubs
        self.stubs = {pid: model for pid, model in counted.items() if model not in ignore}
        self.expected = python_models(server_repositories(server_pid)) - ignore

    def dead(self) -> list[str]:
        """What died, as "model (pid N)" or "model (no process)"."""
        live = Counter(stubs_of(self.server_pid).values())
        counted = Counter(self.stubs.values())
        gone = [f"{model} (pid {pid})" for pid, model in self.stubs.items()
                if live[model] < counted[model] and not is_alive(pid)]
        missing = [f"{model} (no process)" for model in self.expected - set(live) if model not in counted]
        return sorted(gone + missing)

    def dead_models(self) -> list[str]:
        """The models of ``dead()``, each once."""
        return sorted({entry.split(" (", 1)[0] for entry in self.dead()})

    def recount(self, models: list[str]) -> None:
        """Count these models' processes again (they were replaced), keeping the others' first count."""
        self.stubs = {pid: model for pid, model in self.stubs.items() if model not in models}
        self.stubs.update({pid: model for pid, model in stubs_of(self.server_pid).items() if model in models})


def find_server() -> int | None:
    """The one process named tritonserver (in a container, the server itself)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() == "tritonserver":
                found.append(int(entry))
        except OSError:
            continue
    return found[0] if len(found) == 1 else None


def http_status(host: str, port: int, path: str, timeout_s: float = 3.0) -> int | None:
    """The status of ``GET path`` on a fresh connection (a gRPC channel that failed to connect backs
    off for seconds); None when nothing answers."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def check(server_pid: int, state_file: Path) -> str | None:
    """None if every stub recorded for this server is alive, else what died. Records the census on
    the first call for a server (a new pid or start time: the container restarted)."""

    ignore = frozenset({READINESS_GATE})  # its process comes and goes on purpose
    identity = {"pid": server_pid, "start_time": start_time(server_pid)}
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = None
    if state is None or state.get("server") != identity:
        census = StubCensus(server_pid, ignore=ignore)
        partial = state_file.with_name(f"{state_file.name}.{os.getpid()}")
        partial.write_text(json.dumps({"server": identity, "stubs": census.stubs}))
        partial.replace(state_file)  # whole or not at all: the readiness and liveness probes may race
        return None
    dead = StubCensus(server_pid, {int(pid): model for pid, model in state["stubs"].items()}, ignore).dead()
    return f"model process died: {', '.join(dead)}" if dead else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smartedit.ops.health", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pid", type=int, default=None, help="the tritonserver process (default: the one running)")
    parser.add_argument("--state", type=Path, default=Path("/tmp/smartedit-stubs.json"))
    endpoint = parser.add_mutually_exclusive_group()
    endpoint.add_argument("--ready", action="store_true", help="also require /v2/health/ready to answer 200")
    endpoint.add_argument("--live", action="store_true", help="also require /v2/health/live to answer 200")
    parser.add_argument("--http-port", type=int, default=8000)
    args = parser.parse_args(argv)
    server_pid = args.pid or find_server()
    if server_pid is None or start_time(server_pid) is None:
        print("smartedit.ops.health: no tritonserver process found", file=sys.stderr)
        return 1
    for wanted, path in ((args.ready, "/v2/health/ready"), (args.live, "/v2/health/live")):
        if wanted and http_status("127.0.0.1", args.http_port, path) != 200:
            print(f"smartedit.ops.health: {path} does not answer 200", file=sys.stderr)
            return 1
    problem = check(server_pid, args.state)
    if problem:
        print(f"smartedit.ops.health: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
