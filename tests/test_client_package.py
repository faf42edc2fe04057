"""The client distribution on its own: its error mapping, its install footprint, its CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, scene
from smartedit_client import _errors

ROOT = Path(__file__).resolve().parent.parent


class FakeTritonError(Exception):
    """Shaped like tritonclient's InferenceServerException: status() and message()."""

    def __init__(self, status, message):
        self._status, self._message = status, message

    def status(self):
        return self._status

    def message(self):
        return self._message


@pytest.mark.parametrize("status,expected", [
    ("StatusCode.INVALID_ARGUMENT", _errors.InvalidRequestError),
    ("StatusCode.DEADLINE_EXCEEDED", _errors.RequestTimeoutError),
    ("StatusCode.UNAVAILABLE", _errors.ServerUnavailableError),
    ("StatusCode.RESOURCE_EXHAUSTED", _errors.ServerOverloadedError),
    ("StatusCode.CANCELLED", _errors.RequestCancelledError),
    ("StatusCode.NOT_FOUND", _errors.ModelNotFoundError),
    ("StatusCode.INTERNAL", _errors.ServerError),
    (None, _errors.ServerError),
])
def test_errors_map_on_status_codes(status, expected):
    error = _errors.from_triton(FakeTritonError(status, "boom"))
    assert type(error) is expected and str(error) == "boom"
    assert isinstance(error, _errors.SmartEditError)


@pytest.mark.parametrize("message,expected", [
    ("in ensemble 'inpaint', server at capacity: 8 edits denoising and 16 waiting", _errors.ServerOverloadedError),
    ("Exceeds maximum queue size", _errors.ServerOverloadedError),
    ("Server is not ready", _errors.ServerUnavailableError),
    ("failed to connect to all addresses", _errors.ServerUnavailableError),
])
def test_unavailable_is_overloaded_only_when_the_server_refused_for_capacity(message, expected):
    error = _errors.from_triton(FakeTritonError("StatusCode.UNAVAILABLE", message))
    assert type(error) is expected and error.status == "UNAVAILABLE"


def test_unreachable_server_is_server_unavailable():
    from smartedit_client import InpaintClient, ServerUnavailableError

    image, mask = scene(16, 16)
    with InpaintClient(f"127.0.0.1:{free_port()}", timeout_s=5) as client:
        assert not client.is_ready()
        with pytest.raises(ServerUnavailableError):
            client.inpaint(image=image, mask_image=mask, prompt="x")


@pytest.mark.functional
def test_client_installs_alone_and_works(server, tmp_path):
    venv = tmp_path / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT / "client")], check=True)
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], check=True,
                               capture_output=True, text=True).stdout.lower()
    for heavy in ("torch", "diffusers", "onnx", "onnxruntime", "transformers"):
        assert f"\n{heavy}==" not in "\n" + installed, f"{heavy} was installed with the client"
    image, mask = scene(32, 32)
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "edited.png"
    cli = subprocess.run(
        [str(venv / "bin" / "smartedit-edit"), "--url", server.address.grpc, "--image", str(tmp_path / "in.png"),
         "--mask", str(tmp_path / "mask.png"), "--prompt", "a cat", "--steps", "2", "--seed", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "seed 5" in cli.stdout and out.read_bytes().startswith(b"\x89PNG")
    bad = subprocess.run(
        [str(venv / "bin" / "smartedit-edit"), "--url", server.address.grpc, "--image", str(tmp_path / "in.png"),
         "--mask", str(tmp_path / "mask.png"), "--prompt", "a cat", "--steps", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "InvalidRequestError" in bad.stderr and "num_inference_steps" in bad.stderr


@pytest.mark.functional
def test_serve_command_reports_and_stops_cleanly_on_sigterm(model_repository, tmp_path):
    grpc_port = free_port()
    command = [sys.executable, "-m", "smartedit", "serve", "--model-repository", str(model_repository),
               "--grpc-port", str(grpc_port), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
               "--log-file", str(tmp_path / "triton.log")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "SmartEdit is serving" in line:
                break
        assert f"gRPC 127.0.0.1:{grpc_port}" in lines[-1], "".join(lines)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
        assert "tritonserver stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
