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

from conftest import read_until_serving, stop_serve
from smartedit.ops.ports import port_holder, port_in_use
from smartedit.ops.server import ServerAddress, ServerFailed, free_port


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


def test_serve_refuses_a_repository_exported_by_another_version_naming_its_models(model_repository, tmp_path):
    import shutil

    repository = tmp_path / "older"
    shutil.copytree(model_repository, repository, ignore=shutil.ignore_patterns("*.onnx"))  # enough to be checked
    # What an export before the package layout wrote: its modules are gone.
    (repository / "preprocess" / "1" / "model.py").write_text("from smartedit.steps import INPUT_IDS\n")
    (repository / "custom" / "1").mkdir(parents=True)
    (repository / "custom" / "1" / "model.py").write_text("class TritonPythonModel: ...\n")  # not SmartEdit's
    result = subprocess.run(serve_command(repository, tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"smartedit: {repository} was exported by another SmartEdit version: the code of preprocess is not this "
        f"version's. Export it again (smartedit export --out {repository}, with the --model it was exported from)")
    assert not (tmp_path / "triton.log").exists()  # refused before tritonserver was launched


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
    leftover = tritonservers_on(grpc_port)
    for found in leftover:  # a red run must not leave a server (and its model processes) behind either
        try:
            os.killpg(found.pid, signal.SIGKILL)  # tritonserver leads its own process group
        except ProcessLookupError:
            pass
    assert leftover == [], f"tritonserver left behind: {[(p.pid, p.info['cmdline']) for p in leftover]}"


def tritonservers_on(grpc_port: int) -> list:
    """The live processes started with ``--grpc-port=<grpc_port>``, as ``server_command`` starts
    tritonserver. (``pgrep -f --grpc-port=N`` reads the pattern as an option of its own and finds nothing.)"""
    import psutil

    flag = f"--grpc-port={grpc_port}"
    return [process for process in psutil.process_iter(["cmdline", "status"])
            if process.info["status"] != psutil.STATUS_ZOMBIE and flag in (process.info["cmdline"] or ())]


@pytest.fixture(scope="module")
def locked_down_server(model_repository, tmp_path_factory):
    """``smartedit serve`` with gRPC over TLS (a self-signed certificate made here) and the admin APIs
    behind a key from a file."""
    folder = tmp_path_factory.mktemp("locked")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem")], check=True, capture_output=True)
    (folder / "admin-key").write_text("s3cret-key\n")
    ports = dict(grpc_port=free_port(), http_port=free_port())
    command = serve_command(model_repository, folder, **ports) + [
        "--tls-cert", str(folder / "cert.pem"), "--tls-key", str(folder / "key.pem"),
        "--admin-key-file", str(folder / "admin-key")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        lines = read_until_serving(process)
        assert "(TLS)" in lines[-1], "".join(lines)
        yield dict(ports, cert=folder / "cert.pem", key="s3cret-key")
    finally:
        stop_serve(process)


@pytest.mark.functional
def test_a_tls_server_edits_for_a_client_that_trusts_its_certificate_only(locked_down_server):
    from conftest import scene
    from smartedit_client import InpaintClient

    url = f"127.0.0.1:{locked_down_server['grpc_port']}"
    image, mask = scene(32, 32)
    with InpaintClient(url, root_certificates=locked_down_server["cert"], timeout_s=60) as client:
        result = client.inpaint(image=image, mask_image=mask, prompt="a cat", num_inference_steps=2, seed=1)
    assert result.png.startswith(b"\x89PNG")
    with InpaintClient(url, timeout_s=10) as plaintext:
        assert not plaintext.is_ready()  # no TLS, no service
    with InpaintClient(url, ssl=True, timeout_s=10) as untrusting:
        assert not untrusting.is_ready()  # TLS, but the self-signed certificate is not in the system's store


@pytest.mark.functional
def test_admin_apis_are_refused_without_the_key_and_served_with_it(locked_down_server):
    import http.client
    import json
    from multiprocessing import shared_memory

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from smartedit.ops.server import ADMIN_KEY_GRPC_HEADER, ADMIN_KEY_HEADER

    def shared_memory_api(action, headers, body=""):
        connection = http.client.HTTPConnection("127.0.0.1", locked_down_server["http_port"], timeout=30)
        connection.request("POST", f"/v2/systemsharedmemory/{action}", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode()

    # A region that exists, so that the request with the key is served (200), not refused by the
    # shared-memory API for a reason of its own (any status but 403 would not show the lock let it by).
    region = shared_memory.SharedMemory(create=True, size=64)
    try:
        register = json.dumps({"key": f"/{region.name}", "offset": 0, "byte_size": 64})
        status, body = shared_memory_api("region/stolen/register", {}, register)
        assert status == 403 and "restricted" in body.lower(), (status, body)
        status, body = shared_memory_api("region/stolen/register", {ADMIN_KEY_HEADER: "wrong"}, register)
        assert status == 403 and "restricted" in body.lower(), (status, body)
        key = {ADMIN_KEY_HEADER: locked_down_server["key"]}
        assert shared_memory_api("region/stolen/register", key, register) == (200, "")
        assert shared_memory_api("region/stolen/unregister", key) == (200, "")
    finally:
        region.close()
        region.unlink()

    url = f"127.0.0.1:{locked_down_server['grpc_port']}"
    with grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(locked_down_server["cert"])) as client:
        with pytest.raises(InferenceServerException, match="(?i)restricted"):
            client.get_inference_statistics("unet")
        with pytest.raises(InferenceServerException, match="(?i)restricted"):
            client.get_inference_statistics("unet", headers={ADMIN_KEY_GRPC_HEADER: "wrong"})
        stats = client.get_inference_statistics("unet", headers={ADMIN_KEY_GRPC_HEADER: locked_down_server["key"]})
        assert stats.model_stats[0].name == "unet"
        assert client.is_server_ready()  # health stays open


def test_two_servers_on_one_repository_keep_their_own_admin_keys(tmp_path, monkeypatch):
    from smartedit.cli.main import ADMIN_KEY_ENV, _admin_key, parser
    from smartedit.ops.server import server_dir

    monkeypatch.delenv(ADMIN_KEY_ENV, raising=False)
    args = parser().parse_args(["serve"])
    work = tmp_path / ".triton"
    first = ServerAddress(grpc_port=free_port())
    second = ServerAddress(host="127.0.0.2", grpc_port=first.grpc_port)  # one port, another address
    keys = [_admin_key(args, server_dir(work, address)) for address in (first, second)]
    files = [server_dir(work, address) / "admin-key" for address in (first, second)]
    assert files[0] != files[1] and keys[0] != keys[1]
    assert [path.read_text().strip() for path in files] == keys
    assert all(oct(path.stat().st_mode & 0o777) == "0o600" for path in files)
