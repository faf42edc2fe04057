"""``smartedit serve`` starting up honestly: a busy port is named before anything loads, each model
is reported as it loads, and a signal stops the server at any moment, loading included."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from smartedit.ports import port_holder, port_in_use
from smartedit.server import ServerAddress, ServerFailed, free_port


def serve_command(model_repository, tmp_path, grpc_port=None, http_port=None, metrics_port=None):
    return [sys.executable, "-m", "smartedit", "serve", "--model-repository", str(model_repository),
            "--grpc-port", str(grpc_port or free_port()), "--http-port", str(http_port or free_port()),
            "--metrics-port", str(metrics_port or free_port()), "--log-file", str(tmp_path / "triton.log")]


def test_a_listening_port_is_in_use_and_its_holder_is_named():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        assert port_in_use("0.0.0.0", port)  # listening on all addresses would collide too
        assert port_holder(port).startswith(f"pid {os.getpid()}: ")
    assert not port_in_use("127.0.0.1", port)


def test_the_same_port_twice_is_refused_before_launch():
    port = free_port()
    with pytest.raises(ServerFailed, match=f"the gRPC and metrics ports are both {port}; give --metrics-port another"):
        ServerAddress(grpc_port=port, http_port=free_port(), metrics_port=port).check_free()


def test_serve_on_a_busy_port_fails_at_once_naming_the_port_and_its_holder(model_repository, tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(serve_command(model_repository, tmp_path, http_port=busy),
                                capture_output=True, text=True, timeout=60)
        took_s = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert f"the HTTP port 127.0.0.1:{busy} is already in use by pid {os.getpid()}" in result.stderr
    assert "--http-port" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "triton.log").exists()  # refused before tritonserver was launched
    print(f"refused in {took_s:.2f} s")


@pytest.mark.functional
def test_serve_reports_each_model_as_it_loads_and_stops_on_sigterm_while_loading(model_repository, tmp_path):
    grpc_port = free_port()
    process = subprocess.Popen(serve_command(model_repository, tmp_path, grpc_port=grpc_port), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if " loaded (1 of " in line:
                break  # loading has begun and is being reported; the server is not ready yet
        assert any(" loaded (1 of " in line for line in lines), "".join(lines)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        rest = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert "SmartEdit is serving" not in rest
    assert "stopped while the models were loading" in rest
    leftover = subprocess.run(["pgrep", "-f", f"--grpc-port={grpc_port}"], capture_output=True, text=True)
    assert leftover.stdout == ""  # no tritonserver left behind
