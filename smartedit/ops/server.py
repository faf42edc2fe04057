"""Run the real ``tritonserver`` that ships in ``nvidia-pytriton`` on a model repository, no Docker.

The wheel carries Triton 2.51 with its Python backend. Run directly, it needs: a backend folder
holding ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the stub built for this
Python; this venv's ``bin`` first on PATH (the stub finds the venv's interpreter through it); and
``LD_LIBRARY_PATH`` starting with this interpreter's own LIBDIR, *then* the wheel's bundled libs
(else the stub may load the system libpython and fail on ``_thread.RLock``).

By default it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from smartedit.ops.health import ADMIN_KEY_HEADER, http_status
from smartedit.ops.ports import busy_port_message, port_in_use

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

# Triton's APIs that only operators need: closed to callers without the admin key header when the
# server is started restricted (``smartedit serve`` and the chart do so by default). Inference,
# health and metadata stay open. (Shared memory is the dangerous one: a caller could register the
# Python backend's own region.)
RESTRICTED_APIS = ("shared-memory", "model-config", "model-repository", "statistics", "trace", "logging")
# The admin key's HTTP header (smartedit.ops.health); over gRPC Triton expects it prefixed:
ADMIN_KEY_GRPC_HEADER = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for gRPC over TLS (Triton 2.51's HTTP endpoint has no TLS)."""

    cert: Path
    key: Path


def server_dir(work_dir: Path, address: "ServerAddress") -> Path:
    """One server's own folder under the work folder: two servers on one repository -- other ports, or one
    port on two addresses -- keep their gates and admin keys apart."""
    return Path(work_dir) / f"server-{address.host.replace(':', '_')}-{address.grpc_port}"


def is_remote(repository: Path | str) -> bool:
    """An object-storage repository (s3://, gs://, as://) that tritonserver reads itself."""
    return "://" in str(repository)


def default_work_dir(repository: Path | str) -> Path:
    """Where a server's own files go (its backend folder, gate, admin key): beside a local repository, in
    the temp folder for a remote one."""
    if is_remote(repository):
        return Path(tempfile.gettempdir()) / "smartedit"
    return Path(repository).resolve().parent / ".triton"


def restriction_args(admin_key: str) -> list[str]:
    """tritonserver flags that close ``RESTRICTED_APIS`` to requests without ``ADMIN_KEY_HEADER: admin_key``."""
    if not admin_key or any(c in admin_key for c in ",:= \n"):
        raise ValueError("the admin key must be non-empty, without spaces, commas, colons or '='")
    apis = ",".join(RESTRICTED_APIS)
    return [f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={admin_key}",
            f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={admin_key}"]


def tls_args(tls: TlsFiles) -> list[str]:
    return ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(tls.cert).resolve()}",
            f"--grpc-server-key={Path(tls.key).resolve()}"]


class ServerFailed(RuntimeError):
    """tritonserver exited or did not become ready."""


class StartInterrupted(RuntimeError):
    """Asked to stop (Ctrl-C, SIGTERM) while the models were still loading; the server was stopped."""


@dataclass(frozen=True)
class ServerAddress:
    host: str = LOOPBACK
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    http_host: str | None = None  # where HTTP listens, if not on ``host`` (loopback only under TLS)

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"{self.http_host or self.host}:{self.http_port}"

    @property
    def local_http_host(self) -> str:
        """Where this machine reaches the HTTP endpoint: the loopback address when it listens on all."""
        return _local(self.http_host or self.host)

    @property
    def local_grpc(self) -> str:
        """Where this machine reaches the gRPC endpoint (``host:port``)."""
        return f"{_local(self.host)}:{self.grpc_port}"

    def check_free(self) -> None:
        """Raise ServerFailed naming the first of the three ports that is taken (or given twice)."""
        ports = [("gRPC", self.host, self.grpc_port, "--grpc-port"),
                 ("HTTP", self.http_host or self.host, self.http_port, "--http-port"),
                 ("metrics", self.host, self.metrics_port, "--metrics-port")]
        for index, (name, host, port, option) in enumerate(ports):
            for other, _, other_port, _ in ports[:index]:
                if port == other_port:
                    raise ServerFailed(f"the {other} and {name} ports are both {port}; give {option} another")
            if port_in_use(host, port):
                raise ServerFailed(busy_port_message(name, host, port, option))


def _local(host: str) -> str:
    return {"0.0.0.0": LOOPBACK, "::": "::1", "": LOOPBACK}.get(host, host)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` now (for tests and benchmarks that start servers)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError:
        raise ServerFailed("no local tritonserver: install the local-server extra "
                           "(pip install -e '.[local-server]'), or run the NGC Triton image") from None

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


@dataclass(frozen=True)
class Launch:
    """How to run the tritonserver of this machine: its binary, its backends folder (None: its own), and
    the environment it needs."""

    binary: Path
    backends: Path | None
    environment: dict


def local_launch(work_dir: Path) -> Launch:
    """The wheel's tritonserver (nvidia-pytriton) when installed; else the one on PATH, as in the NGC
    Triton image the server image is built on (its backends and libraries where it expects them)."""
    try:
        import pytriton  # noqa: F401
    except ImportError:
        binary = shutil.which("tritonserver")
        if binary is None:
            pytriton_dir()  # raises, saying what to install
        environment = dict(os.environ)
        environment.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
        return Launch(Path(binary), None, environment)
    return Launch(pytriton_dir() / "bin" / "tritonserver", backend_dir(work_dir), server_environment())


def backend_dir(work_dir: Path) -> Path:
    """A backends folder whose ``python`` backend uses the stub built for this interpreter."""
    source = pytriton_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = source / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerFailed(f"nvidia-pytriton has no Python backend stub for Python {version} at {stub}")
    python_backend = work_dir / "backends" / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    for path in (source / "backends" / "python" / "libtriton_python.so",
                 source / "backends" / "python" / "triton_python_backend_utils.py",
                 stub):
        target = python_backend / path.name
        if not target.exists():
            shutil.copy2(path, target)
    return work_dir / "backends"


MMAP_THRESHOLD = 1 << 20  # see server_environment


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(pytriton_dir().parent.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    # glibc serves allocations below its mmap threshold from heaps it rarely gives back, and raises that
    # threshold (up to 32 MB) each time a large block is freed: after one 24 MP photo, every later
    # photo-sized buffer of tritonserver and the model processes came from the heap and stayed there.
    # A fixed 1 MB threshold keeps large buffers in their own mappings, returned when freed
    # (benchmarks/memory.py: retained memory after a burst of 6000x4000 edits down by about a third).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    return env


def server_command(repositories: list[Path], address: ServerAddress, backends: Path | None,
                   log_verbose: int = 0, extra_args: list[str] | None = None, binary: Path | None = None) -> list[str]:
    command = [str(binary or pytriton_dir() / "bin" / "tritonserver")]
    for repository in repositories:
        command.append(f"--model-repository={repository if is_remote(repository) else Path(repository).resolve()}")
    if backends is not None:
        command.append(f"--backend-directory={backends}")
    command += [
        f"--http-address={address.http_host or address.host}",
        f"--http-port={address.http_port}",
        f"--grpc-address={address.host}",
        f"--grpc-port={address.grpc_port}",
        f"--metrics-address={address.host}",
        f"--metrics-port={address.metrics_port}",
        "--allow-metrics=true",
        # Python-backend tensors travel through shared memory; start the region at 16 MiB so that
        # image-sized tensors do not make it grow on every first request.
        "--backend-config=python,shm-default-byte-size=16777216",
        # Triton keeps this many gRPC request/response objects for reuse (default 8), each holding on to
        # its largest message: after 12 concurrent 24 MP edits, ~450 MB of tritonserver's heap stayed held
        # for good. An edit costs seconds, so allocating its messages afresh costs nothing that shows.
        "--grpc-infer-allocation-pool-size=0",
        "--exit-on-error=true",
        "--strict-readiness=true",
        f"--log-verbose={log_verbose}",
    ]
    return command + list(extra_args or [])


class TritonServer:
    """A running tritonserver process; a context manager that stops it on exit."""

    def __init__(self, repositories: list[Path] | Path, address: ServerAddress = ServerAddress(),
                 work_dir: Path | None = None, log_file: Path | None = None, log_verbose: int = 0,
                 admin_key: str | None = None, tls: TlsFiles | None = None, model_control: bool = False,
                 exit_timeout_s: int | None = None):
        """``admin_key``: close ``RESTRICTED_APIS`` behind it (None: all APIs open, as for tests and
        benchmarks that read statistics). ``tls``: serve gRPC over TLS. ``model_control``: explicit
        model control (every model loaded at start) and the readiness gate's repository
        (``smartedit.ops.model_control``), so that single models can be replaced and readiness held
        down. ``exit_timeout_s``: how long tritonserver waits for requests (and HTTP connections) once
        told to stop (Triton's default: 30)."""
        # A remote repository stays a string: Path() would fold "s3://" into "s3:/".
        self.repositories = [repositories] if isinstance(repositories, (str, Path)) else list(repositories)
        self.address = address
        self.admin_key = admin_key
        self.extra_args = (restriction_args(admin_key) if admin_key is not None else []) + (
            tls_args(tls) if tls is not None else [])
        if exit_timeout_s is not None:
            self.extra_args.append(f"--exit-timeout-secs={exit_timeout_s}")
        self.work_dir = Path(work_dir or default_work_dir(self.repositories[0]))
        self.model_control_mode = model_control
        self.gate_repository: Path | None = None  # written at start
        if model_control:
            self.extra_args += ["--model-control-mode=explicit", "--load-model=*"]
        self.log_file = log_file
        self.log_verbose = log_verbose
        self.process: subprocess.Popen | None = None
        self._shm_regions: set[str] = set()  # the Python backend's shared-memory files, once ready
        self._log_handle = None

    def start(self) -> "TritonServer":
        for repository in self.repositories:
            if not is_remote(repository) and not Path(repository).is_dir():
                raise ServerFailed(f"model repository {repository} does not exist; run the export first")
        # Triton would find a busy port only after loading every model, and say only "exit code 1".
        self.address.check_free()
        launch = local_launch(self.work_dir)
        if self.model_control_mode:
            from smartedit.ops.model_control import write_gate_repository

            # A folder per server: two servers on one repository must not share a gate.
            self.gate_repository = write_gate_repository(self.server_dir)
        repositories = self.repositories + ([self.gate_repository] if self.gate_repository else [])
        command = server_command(repositories, self.address, launch.backends, self.log_verbose, self.extra_args,
                                 binary=launch.binary)
        if self.log_file is not None:
            Path(self.log_file).parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_file, "ab")
        log.info("starting %s", " ".join(_hide_key(part) for part in command))
        self.process = subprocess.Popen(
            command, env=launch.environment, stdout=self._log_handle, stderr=subprocess.STDOUT,
            # Its own process group, so a Ctrl-C in the terminal reaches us, and we stop it in order.
            start_new_session=True)
        return self

    def wait_until_ready(self, timeout_s: float = 300.0, stop: threading.Event | None = None) -> None:
        """Poll readiness every 0.2 s (a new HTTP connection each time: a gRPC channel that failed to
        connect backs off for seconds) and log each model as it loads.

        Raises:
            ServerFailed: tritonserver exited, or was not ready within ``timeout_s`` (it is stopped).
            StartInterrupted: ``stop`` was set first (it is stopped).
        """
        deadline = time.monotonic() + timeout_s
        progress = _LoadProgress(self.log_file, self.repositories + [r for r in [self.gate_repository] if r])
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"tritonserver exited with code {self.process.returncode} before it was "
                                   f"ready{self._log_hint()}")
            if stop is not None and stop.is_set():
                self.stop(timeout_s=10.0)
                raise StartInterrupted("stopped while the models were loading")
            progress.poll()
            # Not listening yet until Triton has loaded the models.
            if http_status(self.address.local_http_host, self.address.http_port, "/v2/health/ready", 2.0) == 200:
                self._shm_regions = shared_memory_regions(self.process.pid)
                return
            (stop or threading.Event()).wait(0.2)
        self.stop()
        raise ServerFailed(f"tritonserver was not ready after {timeout_s:.0f} s{self._log_hint()}")

    @property
    def server_dir(self) -> Path:
        """This server's own files (its gate, its admin key), apart from other servers' on the repository."""
        return server_dir(self.work_dir, self.address)

    def model_control(self):
        """The model-repository API of this server (``smartedit.ops.model_control.ModelControl``)."""
        from smartedit.ops.model_control import ModelControl

        return ModelControl(f"{self.address.local_http_host}:{self.address.http_port}", self.admin_key,
                            alive=lambda: self.process is not None and self.process.poll() is None)

    def _log_hint(self) -> str:
        if not self.log_file:
            return ""
        errors = _error_lines(Path(self.log_file))
        reason = f": {errors[-1]}" if errors else ""
        return f"{reason} (its log is {self.log_file})"

    def stop(self, timeout_s: float = 60.0, drained: bool = False) -> int | None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL past ``timeout_s``.

        ``drained``: nothing is in flight (``smartedit serve`` drained it): SIGKILL at once. On SIGTERM
        Triton unloads its models for seconds before it closes its ports, and meanwhile answers every
        request NOT_FOUND ("unknown model"): clients balancing over several servers would get those.
        Killed, its connections close at once and clients go to the other servers.
        """
        if self.process is None:
            return None
        if self.process.poll() is None and drained:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:  # a tritonserver that crashed leaves its model processes behind, in its process group
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # ... and its stubs' shared memory, in RAM until removed (a clean exit has removed it already).
        for region in self._shm_regions:
            Path(region).unlink(missing_ok=True)
        self._shm_regions = set()
        if self._log_handle:
            self._log_handle.close()
            self._log_handle = None
        return self.process.returncode

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


SHM_REGION_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


def shared_memory_regions(pid: int) -> set[str]:
    """The Python backend's shared-memory files that process ``pid`` maps (tritonserver maps every
    stub's region)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    return {line[line.index(SHM_REGION_PREFIX):].removesuffix(" (deleted)")
            for line in maps.splitlines() if SHM_REGION_PREFIX in line}


class _LoadProgress:
    """Logs each model once as Triton reports it loaded, or failed to load, while the server starts.

    Triton opens its endpoints only after loading every model, so its log is the only witness; when
    the log goes to the terminal (no log file) its own lines already say this.
    """

    _LOADED = re.compile(r"successfully loaded '([^']+)'")
    _FAILED = re.compile(r"failed to load '([^']+)'[^:]*: (.*?)\"?$")

    def __init__(self, log_file: Path | None, repositories: list[Path]):
        self._log_file, self._offset, self._loaded = log_file, 0, 0
        # Models of a remote repository cannot be counted here: then each is reported without a total.
        self._total = None if any(is_remote(r) for r in repositories) else sum(
            1 for repository in repositories for config in Path(repository).glob("*/config.pbtxt"))
        if log_file is not None and Path(log_file).exists():
            self._offset = Path(log_file).stat().st_size  # an appended log: only this start's lines

    def poll(self) -> None:
        if self._log_file is None:
            return
        try:
            with open(self._log_file, "rb") as handle:
                handle.seek(self._offset)
                text = handle.read()
        except OSError:
            return
        complete = text.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += complete
        for line in text[:complete].decode(errors="replace").splitlines():
            if (loaded := self._LOADED.search(line)) is not None:
                self._loaded += 1
                of = f" of {self._total}" if self._total else ""
                log.info("model %s loaded (%d%s)", loaded.group(1), self._loaded, of)
            elif (failed := self._FAILED.search(line)) is not None:
                log.error("model %s failed to load: %s", failed.group(1), failed.group(2))


# Error lines every start of the wheel's tritonserver writes on a machine without a GPU.
_HARMLESS_ERRORS = ("CudaDriverHelper has not been initialized",)


def _error_lines(log_file: Path, tail_bytes: int = 65536) -> list[str]:
    """Triton's error lines ("E1122 01:02:03.456 ... ] message") near the end of its log."""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(max(0, log_file.stat().st_size - tail_bytes))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    lines = [line.split("] ", 1)[-1].strip().strip('"') for line in text.splitlines()
             if line[:1] == "E" and line[1:5].isdigit()]
    return [line for line in lines if not any(harmless in line for harmless in _HARMLESS_ERRORS)]


def _hide_key(argument: str) -> str:
    if argument.startswith(("--grpc-restricted-protocol=", "--http-restricted-api=")):
        return argument.rsplit("=", 1)[0] + "=***"
    return argument
