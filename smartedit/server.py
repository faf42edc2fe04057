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
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class ServerFailed(RuntimeError):
    """tritonserver exited or did not become ready."""


@dataclass(frozen=True)
class ServerAddress:
    host: str = LOOPBACK
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"


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


def server_environment() -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(pytriton_dir().parent.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    return env


def server_command(repositories: list[Path], address: ServerAddress, backends: Path,
                   log_verbose: int = 0, extra_args: list[str] | None = None) -> list[str]:
    command = [str(pytriton_dir() / "bin" / "tritonserver")]
    for repository in repositories:
        command.append(f"--model-repository={Path(repository).resolve()}")
    command += [
        f"--backend-directory={backends}",
        f"--http-address={address.host}",
        f"--http-port={address.http_port}",
        f"--grpc-address={address.host}",
        f"--grpc-port={address.grpc_port}",
        f"--metrics-address={address.host}",
        f"--metrics-port={address.metrics_port}",
        "--allow-metrics=true",
        # Python-backend tensors travel through shared memory; start the region at 16 MiB so that
        # image-sized tensors do not make it grow on every first request.
        "--backend-config=python,shm-default-byte-size=16777216",
        "--exit-on-error=true",
        "--strict-readiness=true",
        f"--log-verbose={log_verbose}",
    ]
    return command + list(extra_args or [])


class TritonServer:
    """A running tritonserver process; a context manager that stops it on exit."""

    def __init__(self, repositories: list[Path] | Path, address: ServerAddress = ServerAddress(),
                 work_dir: Path | None = None, log_file: Path | None = None, log_verbose: int = 0):
        self.repositories = [repositories] if isinstance(repositories, (str, Path)) else list(repositories)
        self.address = address
        self.work_dir = Path(work_dir or Path(self.repositories[0]).resolve().parent / ".triton")
        self.log_file = log_file
        self.log_verbose = log_verbose
        self.process: subprocess.Popen | None = None
        self._log_handle = None

    def start(self) -> "TritonServer":
        for repository in self.repositories:
            if not Path(repository).is_dir():
                raise ServerFailed(f"model repository {repository} does not exist; run the export first")
        backends = backend_dir(self.work_dir)
        command = server_command(self.repositories, self.address, backends, self.log_verbose)
        if self.log_file is not None:
            Path(self.log_file).parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_file, "ab")
        log.info("starting %s", " ".join(command))
        self.process = subprocess.Popen(
            command, env=server_environment(), stdout=self._log_handle, stderr=subprocess.STDOUT,
            # Its own process group, so a Ctrl-C in the terminal reaches us, and we stop it in order.
            start_new_session=True)
        return self

    def wait_until_ready(self, timeout_s: float = 300.0) -> None:
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout_s
        client = grpcclient.InferenceServerClient(self.address.grpc)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerFailed(f"tritonserver exited with code {self.process.returncode} before it was "
                                       f"ready{self._log_hint()}")
                try:
                    if client.is_server_ready():
                        return
                except Exception:
                    pass  # not listening yet
                time.sleep(0.5)
        finally:
            client.close()
        self.stop()
        raise ServerFailed(f"tritonserver was not ready after {timeout_s:.0f} s{self._log_hint()}")

    def _log_hint(self) -> str:
        return f"; its log is {self.log_file}" if self.log_file else ""

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL past ``timeout_s``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
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
