"""The client distribution on its own: its error mapping, its install footprint, its CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, pip_install_offline, read_until_serving, scene
from smartedit_client import _errors

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def triton_error():
    """What tritonclient raises for a call a server refused with gRPC ``status`` (a ``grpc.StatusCode``
    name) and ``message``: a gRPC server in this process aborts Triton's ModelInfer so, and tritonclient's
    own client turns the ``RpcError`` into its ``InferenceServerException``, as it does for SmartEdit's
    server. ``status`` None: tritonclient's own client-side error, which carries no status."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException, raise_error

    answer = {}

    def model_infer(request, context):
        context.abort(getattr(grpc.StatusCode, answer["status"]), answer["message"])

    server = grpc.server(ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def refused(status, message) -> InferenceServerException:
        with pytest.raises(InferenceServerException) as caught:
            if status is None:
                raise_error(message)
            answer.update(status=status, message=message)
            with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
                client.infer("inpaint", [grpcclient.InferInput("prompt", [1], "BYTES").set_data_from_numpy(
                    np.array([b"x"], dtype=np.object_))], client_timeout=30)
        return caught.value

    yield refused
    server.stop(grace=None)


@pytest.mark.parametrize("status,expected", [
    ("INVALID_ARGUMENT", _errors.InvalidRequestError),
    ("DEADLINE_EXCEEDED", _errors.RequestTimeoutError),
    ("UNAVAILABLE", _errors.ServerUnavailableError),
    ("RESOURCE_EXHAUSTED", _errors.ServerOverloadedError),
    ("CANCELLED", _errors.RequestCancelledError),
    ("NOT_FOUND", _errors.ModelNotFoundError),
    ("INTERNAL", _errors.ServerError),
    (None, _errors.ServerError),
])
def test_errors_map_on_status_codes(triton_error, status, expected):
    error = _errors.from_triton(triton_error(status, "boom"))
    assert type(error) is expected and str(error) == "boom"
    assert isinstance(error, _errors.SmartEditError) and error.status == status


@pytest.mark.parametrize("message,expected", [
    ("in ensemble 'inpaint', server at capacity: 8 edits denoising and 16 waiting", _errors.ServerOverloadedError),
    ("Exceeds maximum queue size", _errors.ServerOverloadedError),
    ("Server is not ready", _errors.ServerUnavailableError),
    ("failed to connect to all addresses", _errors.ServerUnavailableError),
])
def test_unavailable_is_overloaded_only_when_the_server_refused_for_capacity(triton_error, message, expected):
    error = _errors.from_triton(triton_error("UNAVAILABLE", message))
    assert type(error) is expected and error.status == "UNAVAILABLE"


def test_errors_carry_the_servers_words_and_the_field_they_name(triton_error):
    refused = _errors.from_triton(triton_error(
        "INVALID_ARGUMENT", "in ensemble 'inpaint', num_inference_steps: must be >= 1, got 0"))
    assert str(refused) == "num_inference_steps: must be >= 1, got 0" and refused.field == "num_inference_steps"
    # Only a field of the contract is a field: a message that merely has a colon names none.
    vague = _errors.from_triton(triton_error("INVALID_ARGUMENT", "denoising failed: boom"))
    assert vague.field is None
    failed = _errors.from_triton(triton_error("INTERNAL", "in ensemble 'inpaint', preprocess failed: x"))
    assert str(failed) == "preprocess failed: x" and failed.field is None


def test_an_address_where_nothing_answers_is_named_with_what_to_check():
    import asyncio

    from smartedit_client import AsyncInpaintClient, InpaintClient, ServerUnavailableError

    image, mask = scene(16, 16)
    address = f"127.0.0.1:{free_port()}"
    expected = f"cannot reach the SmartEdit server at {address} (is `smartedit serve` running?)"
    with InpaintClient(address, timeout_s=5) as client:
        assert not client.is_ready()
        with pytest.raises(ServerUnavailableError) as unary:
            client.inpaint(image=image, mask_image=mask, prompt="x")
        with pytest.raises(ServerUnavailableError) as streamed:
            with client.inpaint_stream(image=image, mask_image=mask, prompt="x") as stream:
                list(stream)
        with pytest.raises(ServerUnavailableError) as info:
            client.server_info()

    async def from_asyncio():
        async with AsyncInpaintClient(address, timeout_s=5) as aclient:
            with pytest.raises(ServerUnavailableError) as refused:
                await aclient.inpaint(image=image, mask_image=mask, prompt="x")
            return refused.value

    for error in (unary.value, streamed.value, info.value, asyncio.run(from_asyncio())):
        assert str(error) == expected, str(error)
        assert "connect" in error.detail.lower()  # what gRPC said, for whoever digs


@pytest.mark.parametrize("url,target", [("127.0.0.1:8001", "127.0.0.1:8001"),
                                        ("grpc://edit.example.com:443/", "edit.example.com:443")])
def test_the_client_takes_host_port_or_a_grpc_url(url, target):
    from smartedit_client import InpaintClient

    with InpaintClient(url) as client:
        assert client.url == target


def test_an_http_url_is_refused_saying_what_to_give():
    from smartedit_client import InpaintClient

    with pytest.raises(ValueError, match="url 'http://127.0.0.1:8000': give the server's gRPC endpoint as host:port"):
        InpaintClient("http://127.0.0.1:8000")


def cli_errors(argv) -> str:
    result = subprocess.run([sys.executable, "-m", "smartedit_client.cli", *argv], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


EDIT_ARGS = ["--image", "in.png", "--mask", "mask.png", "--prompt", "a cat"]


@pytest.mark.parametrize("out,message", [
    ("/nonexistent-folder/x.png", "--out '/nonexistent-folder/x.png': the folder '/nonexistent-folder' does not exist"),
    ("x.bmp", "--out 'x.bmp': the file extension decides the format; use one of .png, .jpg, .jpeg, .webp"),
    ("/", "--out '/' is a folder; give a file name"),
])
def test_the_cli_refuses_an_unusable_out_before_sending_anything(out, message):
    # No server listens on this port: the error must come before any attempt to reach one.
    assert cli_errors(EDIT_ARGS + ["--url", f"127.0.0.1:{free_port()}", "--out", out]) == f"smartedit-edit: error: {message}"


def test_the_cli_refuses_an_http_url_with_a_message():
    line = cli_errors(EDIT_ARGS + ["--url", "http://127.0.0.1:8000", "--out", "x.png"])
    assert line.startswith("smartedit-edit: error: url 'http://127.0.0.1:8000': give the server's gRPC endpoint")


def test_a_result_is_saved_in_the_format_its_extension_names(tmp_path):
    import io

    from PIL import Image

    from smartedit_client._result import InpaintResult

    image, _ = scene(24, 16)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    result = InpaintResult.from_pngs([buffer.getvalue()], [1], request_id="r", elapsed_s=0.1)
    result.save(tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes() == buffer.getvalue()  # the server's bytes, not re-encoded
    for name, image_format in (("a.jpg", "JPEG"), ("a.JPEG", "JPEG"), ("a.webp", "WEBP")):
        result.save(tmp_path / name)
        with Image.open(tmp_path / name) as written:
            assert written.format == image_format and written.size == (24, 16)
    with Image.open(tmp_path / "a.webp") as webp:
        assert list(webp.convert("RGB").getdata()) == list(image.convert("RGB").getdata())  # lossless
    with pytest.raises(ValueError, match="the file extension decides the format"):
        result.save(tmp_path / "a.gif")


@pytest.mark.functional
def test_client_installs_alone_and_works(server, tmp_path):
    venv = tmp_path / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip_install_offline(python, str(ROOT / "client"))
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
        lines = read_until_serving(process)
        assert f"gRPC 127.0.0.1:{grpc_port}" in lines[-1], "".join(lines)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0
        assert "tritonserver stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("field,value", [("crop_padding", 2**40), ("num_inference_steps", 2**32 + 5), ("seed", 2**64)])
def test_an_integer_out_of_its_wire_range_is_refused_naming_the_field_not_wrapped(field, value):
    from smartedit_client import InpaintClient, InvalidRequestError

    with InpaintClient(f"127.0.0.1:{free_port()}") as client:  # refused before anything is sent
        with pytest.raises(InvalidRequestError, match=rf"^{field}: cannot be sent as INT(32|64): {value} \(out of"):
            client.inpaint(image=b"x", mask_image=b"y", prompt="p", **{field: value})


def test_the_sdks_options_are_the_contracts_parameters():
    from smartedit_client import EditOptions
    from smartedit_client import _contract as wire

    # and the images an edit may carry besides the photo and its mask (a ControlNet's control_image)
    assert set(EditOptions.__annotations__) == ({spec.name for spec in wire.PARAMETERS + wire.IMAGE_OPTIONS}
                                                - {wire.PROMPT.name})
