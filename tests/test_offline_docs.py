"""The gateway's pages on a machine without internet, in a real headless Chromium whose every request
to anything but the gateway is refused (and recorded: one such request fails the test): /docs (Swagger
UI) and /redoc render the API from the files the gateway ships, and the editor, with the inference
server unreachable, says what the gateway says instead of failing silently. No tritonserver runs
here: the gateway points at a port nothing listens on. Run with `pytest -m browser`."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request

import pytest

from playwright.sync_api import expect

from conftest import png_bytes, scene
from smartedit.ops.server import free_port
from test_editor import _at, _paint, _photo, offline_page
from test_gateway import gateway

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lonely_gateway(tmp_path_factory):
    """A gateway whose inference server cannot be reached."""
    with gateway(f"127.0.0.1:{free_port()}", tmp_path_factory.mktemp("gateway") / "gateway.log") as url:
        yield url


def test_swagger_ui_renders_every_endpoint_and_segments_request_body_offline(lonely_gateway, browser):
    with offline_page(browser, lonely_gateway) as page:
        page.goto(lonely_gateway + "/docs")
        page.wait_for_selector(".opblock-summary-path >> text=/segment", timeout=30_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert paths == ["/edit/inpaint", "/edit/inpaint/stream", "/edit/resume/stream", "/segment", "/health", "/info"]
        page.click(".opblock-summary-path >> text=/segment")
        operation = page.locator(".opblock.is-open")
        expect(operation).to_contain_text("Request body")  # it unfolds over a few frames
        assert "points" in operation.inner_text() and "box" in operation.inner_text()


def test_redoc_renders_the_api_offline(lonely_gateway, browser):
    with offline_page(browser, lonely_gateway) as page:
        page.goto(lonely_gateway + "/redoc")
        page.wait_for_selector("text=/segment", timeout=30_000)
        text = page.inner_text("body")
        assert "/edit/inpaint/stream" in text and "mask_image" in text and "points" in text


def _failure(request: urllib.request.Request) -> dict:
    """The gateway's answer to a streamed edit that fails: an error event, or a refusal before the stream."""
    try:
        answer = urllib.request.urlopen(request, timeout=60).read().decode()
    except urllib.error.HTTPError as error:
        return {"status": error.code, **json.loads(error.read())}
    event = dict(line.split(": ", 1) for line in answer.strip().split("\n"))
    assert event["event"] == "error", answer
    return json.loads(event["data"])


def test_the_editor_shows_the_gateways_message_when_the_server_cannot_be_reached(lonely_gateway, browser, tmp_path):
    image, mask = scene(64, 48)
    body = {"image": base64.b64encode(png_bytes(image)).decode(), "mask_image": base64.b64encode(png_bytes(mask)).decode(),
            "prompt": "x"}
    request = urllib.request.Request(lonely_gateway + "/edit/inpaint/stream", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    failure = _failure(request)
    assert failure["status"] == 503, failure
    _photo().save(tmp_path / "photo.png")
    with offline_page(browser, lonely_gateway) as page:
        page.goto(lonely_gateway + "/")
        expect(page.locator("#server")).to_have_text(re.compile("^server not reachable"))
        page.set_input_files("#photo", str(tmp_path / "photo.png"))
        page.wait_for_selector("#stage[data-ready='1']")
        _paint(page, (0.3, 0.3), (0.6, 0.6))
        page.fill("#prompt", "x")
        page.click("#run")
        page.wait_for_selector("#status.error", timeout=60_000)
        assert page.inner_text("#status") == f"Edit failed: {failure['message']}"
        assert page.is_hidden("#progress") and page.is_enabled("#run")
        # A click for a mask fails the same way, in words.
        page.click("button[data-tool='object']")
        page.mouse.click(*_at(page, 0.5, 0.5))
        expect(page.locator("#status")).to_have_text(re.compile("^Finding the object failed"))
