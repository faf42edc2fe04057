"""The REST gateway, started as its command starts it, in front of the real tritonserver: curl and
HTTP clients get the gRPC SDK's bytes, errors as JSON naming the field, a size cap that refuses before
reading, health that follows Triton, SSE streams, CORS, OpenAPI, and a request id in every log line."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import pip_install_offline, png_bytes, scene, serving
from smartedit.ops.server import free_port

pytestmark = pytest.mark.functional

ROOT = Path(__file__).resolve().parent.parent

EDIT = {"prompt": "a red chair", "negative_prompt": "ugly", "num_inference_steps": 4, "seed": 21}
MAX_REQUEST_MB = 2


@contextlib.contextmanager
def gateway(triton_grpc: str, log_path: Path, *extra: str):
    """``smartedit-gateway`` as a process; its base URL once it answers."""
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "smartedit_gateway", "--triton", triton_grpc,
                                    "--port", str(port), "--max-request-mb", str(MAX_REQUEST_MB), *extra],
                                   stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/openapi.json", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def gateway_url(server, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with gateway(server.address.grpc, log_path, "--cors-origin", "https://editor.example") as url:
        yield url


def _files(tmp_path, size=(64, 48), seed=3):
    image, mask = scene(*size, seed=seed)
    (tmp_path / "image.png").write_bytes(png_bytes(image))
    (tmp_path / "mask.png").write_bytes(png_bytes(mask))
    return image, mask


def _post_json(url: str, body: dict, headers: dict | None = None):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_curl_multipart_returns_the_grpc_sdks_png_bytes(gateway_url, client, tmp_path):
    image, mask = _files(tmp_path)
    out = tmp_path / "out.png"
    run = subprocess.run(["curl", "-sS", "-D", str(tmp_path / "headers"), "-F", f"image=@{tmp_path / 'image.png'}",
                          "-F", f"mask_image=@{tmp_path / 'mask.png'}", *sum((["-F", f"{k}={v}"] for k, v in EDIT.items()), []),
                          "-F", "mask_blur=2", f"{gateway_url}/edit/inpaint", "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    headers = (tmp_path / "headers").read_text().lower()
    assert "content-type: image/png" in headers and "x-seed: 21" in headers and "x-request-id: " in headers
    assert out.read_bytes() == client.inpaint(image=image, mask_image=mask, mask_blur=2, **EDIT).png


def test_json_with_base64_images_returns_every_image(gateway_url, client, tmp_path):
    image, mask = _files(tmp_path, seed=4)
    body = {"image": base64.b64encode(png_bytes(image)).decode(),
            "mask_image": "data:image/png;base64," + base64.b64encode(png_bytes(mask)).decode(),
            **EDIT, "num_images": 2, "task": "remove"}
    status, headers, raw = _post_json(gateway_url + "/edit/inpaint", body,
                                      {"Accept": "application/json", "X-Request-Id": "gateway-json-0001"})
    assert status == 200, raw
    answer = json.loads(raw)
    assert answer["request_id"] == "gateway-json-0001" == headers.get("X-Request-Id")
    expected = client.inpaint(image=image, mask_image=mask, num_images=2, task="remove", **EDIT)
    assert [base64.b64decode(i["png_base64"]) for i in answer["images"]] == [i.png for i in expected.images]
    # Seeds as strings: JavaScript's numbers would round a 64-bit seed.
    assert [i["seed"] for i in answer["images"]] == ["21", "22"] and answer["images"][1]["parameters"]["parameters"]["seed"] == "22"


def test_a_64_bit_seed_travels_as_a_string_of_digits_both_ways(gateway_url, client, tmp_path):
    image, mask = _files(tmp_path, seed=6)
    seed = "7899758643369034638"  # past 2^53
    expected = client.inpaint(image=image, mask_image=mask, **dict(EDIT, seed=int(seed))).png
    body = {"image": base64.b64encode(png_bytes(image)).decode(), "mask_image": base64.b64encode(png_bytes(mask)).decode(),
            **EDIT, "seed": seed}
    status, headers, raw = _post_json(gateway_url + "/edit/inpaint", body, {"Accept": "application/json"})
    assert status == 200, raw
    answer = json.loads(raw)["images"][0]
    assert answer["seed"] == seed == answer["parameters"]["parameters"]["seed"] == headers.get("X-Seed")
    assert base64.b64decode(answer["png_base64"]) == expected
    run = subprocess.run(["curl", "-sS", "-F", f"image=@{tmp_path / 'image.png'}", "-F", f"mask_image=@{tmp_path / 'mask.png'}",
                          *sum((["-F", f"{k}={v}"] for k, v in dict(EDIT, seed=seed).items()), []),
                          f"{gateway_url}/edit/inpaint", "-o", str(tmp_path / "out.png")], capture_output=True, timeout=120)
    assert run.returncode == 0 and (tmp_path / "out.png").read_bytes() == expected
    status, _, raw = _post_json(gateway_url + "/edit/inpaint", dict(body, seed="7e3"))
    assert status == 400 and json.loads(raw)["field"] == "seed", raw


@pytest.mark.parametrize("fields,status,field,fragment", [
    ({"num_inference_steps": "many"}, 400, "num_inference_steps", 'must be an integer, got "many"'),
    ({"num_inference_steps": "0"}, 400, "num_inference_steps", "must be between 1 and"),
    ({"invert_mask": "perhaps"}, 400, "invert_mask", "must be true or false"),
    ({"task": "paint"}, 400, "task", "unknown task 'paint'"),
    ({"colour": "red"}, 400, "colour", "is not a parameter of this API"),
    ({"prompt": None}, 400, "prompt", "is required"),
])
def test_bad_fields_get_json_errors_naming_them(gateway_url, tmp_path, fields, status, field, fragment):
    _files(tmp_path)
    form = dict(EDIT, **fields)
    command = ["curl", "-sS", "-w", "%{http_code}", "-F", f"image=@{tmp_path / 'image.png'}",
               "-F", f"mask_image=@{tmp_path / 'mask.png'}", "-o", str(tmp_path / "body")]
    for key, value in form.items():
        if value is not None:
            command += ["-F", f"{key}={value}"]
    run = subprocess.run(command + [f"{gateway_url}/edit/inpaint"], capture_output=True, text=True, timeout=120)
    body = json.loads((tmp_path / "body").read_text())
    assert int(run.stdout) == status and body["field"] == field and fragment in body["message"], body


def test_the_stream_and_segment_endpoints_answer_bad_values_as_json_too(gateway_url, tmp_path):
    image, mask = _files(tmp_path)
    body = {"image": base64.b64encode(png_bytes(image)).decode(), "mask_image": base64.b64encode(png_bytes(mask)).decode(),
            "prompt": "x", "seed": 2**70}  # past INT64: found by the SDK before sending
    status, _, raw = _post_json(gateway_url + "/edit/inpaint/stream", body)
    assert status == 400 and json.loads(raw)["field"] == "seed", raw
    for points in ([[10, 10, 1e20]], [[10, 10, 2]], [[10]]):
        status, _, raw = _post_json(gateway_url + "/segment", {"image": body["image"], "points": points})
        assert status == 400 and json.loads(raw)["field"] == "points", raw


@pytest.mark.parametrize("changes,field,message", [
    ({"invert_mask": "true"}, "invert_mask",
     'invert_mask: must be true or false (a JSON boolean), got the string "true"'),
    ({"num_inference_steps": "5"}, "num_inference_steps", 'num_inference_steps: must be an integer, got the string "5"'),
    ({"num_inference_steps": 5.5}, "num_inference_steps", "num_inference_steps: must be an integer, got the number 5.5"),
    ({"prompt": 7}, "prompt", "prompt: must be text, got the number 7"),
])
def test_json_values_of_the_wrong_type_are_named_by_their_json_type(gateway_url, tmp_path, changes, field, message):
    image, mask = _files(tmp_path)
    body = {"image": base64.b64encode(png_bytes(image)).decode(), "mask_image": base64.b64encode(png_bytes(mask)).decode(),
            "prompt": "x", **changes}
    status, _, raw = _post_json(gateway_url + "/edit/inpaint", body)
    assert status == 400 and json.loads(raw) == {"field": field, "message": message}, raw


def test_a_prompt_that_is_not_utf8_is_refused_naming_it(gateway_url, tmp_path):
    _files(tmp_path)
    boundary = "not-utf8"
    body = b"".join([
        *(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
          f"Content-Type: image/png\r\n\r\n".encode() + (tmp_path / f"{file}.png").read_bytes() + b"\r\n"
          for name, file in (("image", "image"), ("mask_image", "mask"))),
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'.encode() + b"caf\xe9 au lait\r\n",
        f"--{boundary}--\r\n".encode()])
    request = urllib.request.Request(gateway_url + "/edit/inpaint", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    answer = json.loads(refused.value.read())
    assert refused.value.code == 400 and answer["field"] == "prompt" and "not UTF-8" in answer["message"], answer


def test_segment_without_points_or_box_names_both(gateway_url, tmp_path):
    image, _ = _files(tmp_path)
    status, _, raw = _post_json(gateway_url + "/segment", {"image": base64.b64encode(png_bytes(image)).decode()})
    answer = json.loads(raw)
    assert status == 400 and answer["field"] == "points" and "points or box is required" in answer["message"], raw


def test_a_server_that_cannot_be_reached_is_named_with_what_to_check(tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens here
    image, mask = scene(16, 16)
    with gateway(address, tmp_path / "gateway.log") as url:
        status, _, raw = _post_json(url + "/edit/inpaint", {"image": base64.b64encode(png_bytes(image)).decode(),
                                                            "mask_image": base64.b64encode(png_bytes(mask)).decode(),
                                                            "prompt": "x"})
    assert status == 503, raw
    assert json.loads(raw)["message"] == f"cannot reach the SmartEdit server at {address} (is `smartedit serve` running?)"


def test_other_bodies_and_broken_base64_are_refused(gateway_url):
    status, _, raw = _post_json(gateway_url + "/edit/inpaint", {"image": "***", "mask_image": "", "prompt": "x"})
    assert status == 400 and json.loads(raw)["field"] == "image"
    request = urllib.request.Request(gateway_url + "/edit/inpaint", data=b"x", method="POST",
                                     headers={"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 415


def _answer(connection: socket.socket) -> str:
    """The whole response: the gateway closes the connection after a 413 (its body may come in a later
    segment than its headers)."""
    received = b""
    while True:
        try:
            chunk = connection.recv(4096)
        except ConnectionResetError:  # closed with our unread upload still in its buffer
            break
        if not chunk:
            break
        received += chunk
    return received.decode()


def test_an_oversize_upload_is_refused_before_it_is_read(gateway_url):
    host, port = gateway_url.removeprefix("http://").split(":")
    declared = 100 * 1024 * 1024
    # The answer is read with 64 KiB of the declared 100 MiB sent and the rest never coming: a gateway
    # that read the body before refusing it would wait for the rest until the socket's timeout (there
    # only as a guard against a hang) and the read would fail. No time bound: the order of events shows it.
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(f"POST /edit/inpaint HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                           f"Content-Length: {declared}\r\n\r\n".encode() + b"-" * 65536)
        answer = _answer(connection)
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "the limit is 2097152 bytes" in answer
    # A chunked body (no Content-Length) is cut off once it passes the cap: a file field that goes on.
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"POST /edit/inpaint HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
        connection.sendall(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        chunk = b"x" * 1024 * 1024
        try:
            for _ in range(3):
                connection.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed while the rest was on its way: what is asked of it
        answer = _answer(connection)
    assert answer.startswith("HTTP/1.1 413") and "the limit is 2097152 bytes" in answer, answer


def test_the_stream_sends_progress_previews_and_the_unary_result_as_server_sent_events(gateway_url, client, tmp_path):
    image, mask = _files(tmp_path, seed=5)
    body = {"image": base64.b64encode(png_bytes(image)).decode(), "mask_image": base64.b64encode(png_bytes(mask)).decode(),
            **EDIT, "preview_every": 2}
    status, headers, raw = _post_json(gateway_url + "/edit/inpaint/stream", body)
    assert status == 200 and headers.get("Content-Type").startswith("text/event-stream")
    events = [(block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
              for block in raw.decode().strip().split("\n\n")]
    assert [data["step"] for kind, data in events if kind == "progress"] == [1, 2, 3, 4]
    assert [data["step"] for kind, data in events if kind == "preview"] == [2, 4]
    kind, result = events[-1]
    assert kind == "result"
    assert base64.b64decode(result["images"][0]["png_base64"]) == client.inpaint(image=image, mask_image=mask, **EDIT).png


def _events(raw: bytes) -> list[tuple[str, dict]]:
    return [(block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
            for block in raw.decode().strip().split("\n\n")]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_checkpoint_events_resume_through_the_gateway_to_the_uninterrupted_result(gateway_url, tmp_path):
    image, mask = _files(tmp_path, seed=8)
    photo = {"image": _b64(png_bytes(image)), "mask_image": _b64(png_bytes(mask))}
    status, _, raw = _post_json(gateway_url + "/edit/inpaint/stream", {**photo, **EDIT, "checkpoint_every": 2})
    assert status == 200, raw
    events = _events(raw)
    checkpoints = [data for kind, data in events if kind == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [2] and checkpoints[0]["total_steps"] == 4, [k for k, _ in events]
    assert events[-1][0] == "result"
    finished = base64.b64decode(events[-1][1]["images"][0]["png_base64"])
    first = checkpoints[0]
    # Unpainted: the uninterrupted edit, byte for byte (JSON body, base64 state).
    status, headers, raw = _post_json(gateway_url + "/edit/resume/stream",
                                      {**photo, "resume_state": first["resume_state_base64"], "preview_every": 0})
    assert status == 200 and headers.get("Content-Type").startswith("text/event-stream"), raw
    resumed = _events(raw)
    assert [d["step"] for k, d in resumed if k == "progress"] == [3, 4] and resumed[-1][0] == "result", resumed[-1]
    assert base64.b64decode(resumed[-1][1]["images"][0]["png_base64"]) == finished
    # Painted, as a multipart form with the state as a file: the edit moves inside the mask only.
    checkpoint_image = Image.open(io.BytesIO(base64.b64decode(first["png_base64"]))).convert("RGB")
    pixels = 255 - np.asarray(checkpoint_image)
    pixels[20:44, 20:44] = (255, 0, 0)
    (tmp_path / "state.bin").write_bytes(base64.b64decode(first["resume_state_base64"]))
    (tmp_path / "painted.png").write_bytes(png_bytes(Image.fromarray(pixels)))
    run = subprocess.run(["curl", "-sS", "-N", "-F", f"image=@{tmp_path / 'image.png'}",
                          "-F", f"mask_image=@{tmp_path / 'mask.png'}", "-F", f"resume_state=@{tmp_path / 'state.bin'}",
                          "-F", f"resume_image=@{tmp_path / 'painted.png'}", f"{gateway_url}/edit/resume/stream"],
                         capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr
    kind, result = _events(run.stdout)[-1]
    assert kind == "result", result
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["images"][0]["png_base64"]))).convert("RGB"))
    inside = np.asarray(mask) >= 128
    assert np.array_equal(served[~inside], np.asarray(image.convert("RGB"))[~inside])
    untouched = np.asarray(Image.open(io.BytesIO(finished)).convert("RGB"))
    assert not np.array_equal(served[inside], untouched[inside])


@pytest.mark.parametrize("changes,field,fragment", [
    ({"prompt": "a blue chair"}, "prompt", "the state holds the edit's parameters"),
    ({"seed": 5}, "seed", "the state holds the edit's parameters"),
    ({"resume_state": "not base64!"}, "resume_state", "is not valid base64"),
    ({"resume_state": _b64(b"SMARTEDIT-not-a-state")}, "resume_state", "resume_state"),
    ({"resume_image": "%%%"}, "resume_image", "is not valid base64"),
    ({"checkpoint_every": "two"}, "checkpoint_every", "must be an integer"),
    ({"resume_state": None}, "resume_state", "is required"),
])
def test_the_resume_endpoint_refuses_parameters_and_bad_states_naming_the_field(gateway_url, tmp_path, changes, field,
                                                                                fragment):
    image, mask = _files(tmp_path, seed=9)
    body = {"image": _b64(png_bytes(image)), "mask_image": _b64(png_bytes(mask)),
            "resume_state": _b64(b"\x00" * 64), **changes}
    status, _, raw = _post_json(gateway_url + "/edit/resume/stream", {k: v for k, v in body.items() if v is not None})
    assert status == 400, raw
    answer = json.loads(raw)
    assert answer["field"] == field and fragment in answer["message"], answer


@pytest.mark.parametrize("field", ["mask_image", "control_image"])
def test_a_resume_form_refuses_an_image_sent_as_a_text_field_naming_it(gateway_url, tmp_path, field):
    """Dropped, it would leave the resume without the image its sender meant (the server would then say the mask
    is missing, or refuse the state's control image digest): refused at the form."""
    image, _ = _files(tmp_path, seed=9)
    (tmp_path / "state.bin").write_bytes(b"\x00" * 64)
    run = subprocess.run(["curl", "-sS", "-F", f"image=@{tmp_path / 'image.png'}", "-F",
                          f"resume_state=@{tmp_path / 'state.bin'}", "-F", f"{field}=not a file",
                          "-w", "\n%{http_code}", f"{gateway_url}/edit/resume/stream"],
                         capture_output=True, text=True, timeout=60)
    body, status = run.stdout.rsplit("\n", 1)
    assert status == "400" and json.loads(body)["field"] == field, run.stdout
    assert "must be a file field of the form" in json.loads(body)["message"]


def test_a_corrupted_checkpoint_state_is_refused_naming_resume_state(gateway_url, tmp_path):
    image, mask = _files(tmp_path, seed=10)
    photo = {"image": _b64(png_bytes(image)), "mask_image": _b64(png_bytes(mask))}
    status, _, raw = _post_json(gateway_url + "/edit/inpaint/stream", {**photo, **EDIT, "checkpoint_every": 2})
    state = bytearray(base64.b64decode(next(d for k, d in _events(raw) if k == "checkpoint")["resume_state_base64"]))
    state[len(state) // 2] ^= 0xFF
    status, _, raw = _post_json(gateway_url + "/edit/resume/stream", {**photo, "resume_state": _b64(bytes(state))})
    assert status == 400, raw
    answer = json.loads(raw)
    assert answer["field"] == "resume_state" and "resume_state" in answer["message"], answer


def test_cors_preflight_allows_the_configured_origin_only(gateway_url):
    def preflight(origin):
        request = urllib.request.Request(gateway_url + "/edit/inpaint", method="OPTIONS", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers.get("Access-Control-Allow-Origin")
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Access-Control-Allow-Origin")

    assert preflight("https://editor.example") == (200, "https://editor.example")
    assert preflight("https://elsewhere.example")[1] is None


def test_openapi_and_docs_describe_every_parameter(gateway_url):
    spec = json.loads(urllib.request.urlopen(gateway_url + "/openapi.json", timeout=10).read())
    schema = spec["paths"]["/edit/inpaint"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "mask_image", "prompt", "task", "num_images", "mask_blur", "eta"} <= set(schema["properties"])
    assert schema["properties"]["num_images"]["maximum"] == 8
    segment = spec["paths"]["/segment"]["post"]["requestBody"]["content"]
    assert {"image", "points", "box"} <= set(segment["multipart/form-data"]["schema"]["properties"])
    assert segment["application/json"]["schema"]["required"] == ["image"]
    # The documentation pages load their scripts from the gateway itself (tests/test_offline_docs.py renders them).
    for page, script in (("/docs", "docs-assets/swagger-ui/swagger-ui-bundle.js"), ("/redoc", "docs-assets/redoc/redoc.standalone.js")):
        html = urllib.request.urlopen(gateway_url + page, timeout=10).read().decode()
        assert f'src="{script}"' in html and "https://" not in html
        assert urllib.request.urlopen(f"{gateway_url}/{script}", timeout=10).status == 200
    info = json.loads(urllib.request.urlopen(gateway_url + "/info", timeout=30).read())
    assert "remove" in info["tasks"] and info["parameters"]["num_images"]["maximum"] == 8


def test_health_follows_triton_and_every_log_line_carries_a_request_id(model_repository, tmp_path):
    with serving(model_repository, tmp_path / "triton.log") as triton:
        with gateway(triton.address.grpc, tmp_path / "gateway.log") as url:
            assert urllib.request.urlopen(url + "/health", timeout=30).status == 200
            triton.stop()
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(url + "/health", timeout=30)
            assert caught.value.code == 503 and json.loads(caught.value.read())["status"] == "unavailable"
            image, mask = (base64.b64encode(png_bytes(picture)).decode() for picture in scene(16, 16))
            # A valid edit, so that what answers it is the server being down, not a field.
            status, _, raw = _post_json(url + "/edit/inpaint", {"image": image, "mask_image": mask, "prompt": "x"},
                                        {"X-Request-Id": "gateway-log-0001"})
            assert status == 503, raw
            down = f"cannot reach the SmartEdit server at {triton.address.grpc} (is `smartedit serve` running?)"
            assert json.loads(raw) == {"field": None, "message": down}
    lines = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("path")]
    assert requests and all(line["request_id"] != "-" for line in requests)
    assert any(line["request_id"] == "gateway-log-0001" for line in lines)


def test_the_gateway_installs_without_torch_diffusers_or_onnx(tmp_path):
    venv = tmp_path / "gateway-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip_install_offline(python, str(ROOT / "client"), str(ROOT / "gateway"))
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], check=True,
                               capture_output=True, text=True).stdout.lower()
    for heavy in ("torch", "diffusers", "onnx", "onnxruntime", "transformers"):
        assert f"\n{heavy}==" not in "\n" + installed, f"{heavy} was installed with the gateway"
    assert subprocess.run([str(venv / "bin" / "smartedit-gateway"), "--help"], capture_output=True).returncode == 0
