"""JSON request logs and the scheduler's custom Prometheus metrics, on a real tritonserver."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import png_bytes, scene, serving
from smartedit.serving.structured_log import JsonLineFormatter, timed_stage

STEPS = 4


@pytest.fixture(scope="module")
def server(model_repository, tmp_path_factory):
    """A tritonserver of this module's own (``client`` connects to it too): the tests below assert exact
    changes of its counters, which hold only where no other test's requests run on the server."""
    with serving(model_repository, tmp_path_factory.mktemp("observability") / "tritonserver.log") as running:
        yield running


def scrape(server) -> str:
    url = f"http://{server.address.host}:{server.address.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def metric_value(text: str, name: str, **labels) -> float:
    """The sum over the series of ``name`` whose labels include ``labels``."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            total, found = total + float(match.group(2)), True
    if not found:
        raise AssertionError(f"no series {name}{labels} in /metrics")
    return total


def counted(text: str, **labels) -> float:
    """``smartedit_requests_total`` for exactly these labels (0 before the first such request)."""
    return metric_or_zero(text, "smartedit_requests_total", **labels)


def metric_or_zero(text: str, name: str, **labels) -> float:
    """``metric_value``, or 0 where the series is not there yet."""
    try:
        return metric_value(text, name, **labels)
    except AssertionError:
        return 0.0


def scheduler_counts(text: str) -> dict[str, float]:
    """The loop's counters that one edit moves by a known amount."""
    return {"ok edits": metric_or_zero(text, "smartedit_scheduler_requests_total", outcome="ok"),
            "steps": metric_or_zero(text, "smartedit_scheduler_denoise_steps_total"),
            "edit durations": metric_or_zero(text, "smartedit_scheduler_denoise_duration_seconds_count"),
            "UNet calls": metric_or_zero(text, "smartedit_scheduler_unet_batch_rows_count"),
            "queue waits": metric_or_zero(text, "smartedit_scheduler_queue_wait_seconds_count")}


def changes(server, counts, before: str, expected: dict, wait_s: float = 30.0) -> tuple[dict, str]:
    """How ``counts`` moved since the scrape ``before``, and the last scrape: read until the changes are
    ``expected`` or ``wait_s`` has passed (the engine counts an edit's end just after answering it, and the
    counters travel from the model processes to the server; the wait is only a guard against a hang)."""
    deadline = time.monotonic() + wait_s
    while True:
        after = scrape(server)
        grown = {key: counts(after)[key] - counts(before)[key] for key in expected}
        if grown == expected or time.monotonic() > deadline:
            return grown, after
        time.sleep(0.2)


def json_lines_of(log_file, request_id: str, wait_s: float = 10.0) -> list[dict]:
    """The JSON log lines carrying ``request_id``, waiting for the last stage to be flushed."""
    deadline = time.monotonic() + wait_s
    while True:
        entries = []
        for line in log_file.read_text(errors="replace").splitlines():
            if line.startswith("{") and request_id in line:
                entries.append(json.loads(line))
        if any(e["stage"] == "postprocess" for e in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)


@pytest.mark.functional
def test_metrics_show_the_scheduler_counters_after_an_edit(server, client):
    image, mask = scene(64, 64, seed=7)
    before = scrape(server)

    client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="metrics", seed=3,
                   num_inference_steps=STEPS)

    # One edit alone on the server: one UNet call per step, one wait for a slot, one end.
    expected = {"ok edits": 1, "steps": STEPS, "edit durations": 1, "UNet calls": STEPS, "queue waits": 1}
    grown, after = changes(server, scheduler_counts, before, expected)
    assert grown == expected
    # Gauges exist per loop instance; with no edit in flight (the module is sequential) they are 0.
    assert metric_value(after, "smartedit_scheduler_active_requests") == 0
    assert metric_value(after, "smartedit_scheduler_queued_requests") == 0
    assert metric_value(after, "smartedit_scheduler_steps_per_second") == 0
    # The planner's inputs and choice: the measured costs of this latent size (64x64 px: 8x8 latents), one lane.
    assert metric_value(after, "smartedit_scheduler_unet_lanes") == 1
    fixed = metric_value(after, "smartedit_scheduler_unet_call_fixed_seconds", latent="8x8")
    per_row = metric_value(after, "smartedit_scheduler_unet_call_row_seconds", latent="8x8")
    assert fixed >= 0 and per_row >= 0 and 0 < fixed + 2 * per_row < 5.0  # a tiny UNet call on a CPU
    assert metric_value(after, "smartedit_scheduler_host_seconds_per_edit_step") > 0


@pytest.mark.functional
def test_step_counter_and_gauges_move_while_an_edit_denoises(server, client):
    image, mask = scene(256, 256, seed=7)  # 32x32 latents: slow enough to read the metrics mid-way
    steps_before = metric_or_zero(scrape(server), "smartedit_scheduler_denoise_steps_total")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.inpaint, image=png_bytes(image), mask_image=png_bytes(mask), prompt="live",
                              seed=3, num_inference_steps=150)
        deadline = time.monotonic() + 60
        while True:
            during = scrape(server)
            steps_now = metric_value(during, "smartedit_scheduler_denoise_steps_total") - steps_before
            if steps_now >= 5 or time.monotonic() > deadline or running.done():
                break
            time.sleep(0.1)
        assert not running.done(), "the edit ended before the metrics were read mid-way"
        assert 5 <= steps_now < 150  # counted as the steps run, not when the edit ends
        assert metric_value(during, "smartedit_scheduler_active_requests") == 1
        assert metric_value(during, "smartedit_scheduler_steps_per_second") > 0
        running.result()


@pytest.mark.functional
def test_each_stage_of_an_edit_logs_a_json_line_with_its_request_id(server, client):
    image, mask = scene(64, 64, seed=8)
    result = client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="logs", seed=4,
                            num_inference_steps=STEPS, request_id="test-logs-0001")
    assert result.request_id == "test-logs-0001"

    entries = json_lines_of(server.log_file, "test-logs-0001")
    by_stage = {entry["stage"]: entry for entry in entries}
    assert set(by_stage) == {"preprocess", "denoise", "postprocess"}
    for entry in entries:
        assert entry["request_id"] == "test-logs-0001"
        assert entry["outcome"] == "ok"
        assert entry["duration_ms"] > 0
    assert by_stage["denoise"]["steps_run"] == STEPS
    assert (by_stage["preprocess"]["width"], by_stage["preprocess"]["height"]) == (64, 64)


@pytest.mark.functional
def test_a_rejected_request_logs_the_field_and_value(server, client):
    from smartedit_client import InvalidRequestError

    _, mask = scene(64, 64)
    with pytest.raises(InvalidRequestError):
        client.inpaint(image=b"not an image", mask_image=png_bytes(mask), prompt="x", request_id="test-logs-bad")
    deadline = time.monotonic() + 10
    while not (entries := json_lines_of(server.log_file, "test-logs-bad", wait_s=0)) and time.monotonic() < deadline:
        time.sleep(0.2)
    (entry,) = entries
    assert entry["level"] == "warning" and entry["outcome"] == "failed"
    assert "image" in entry["error"] and "not an" in entry["error"]


def test_unseeded_client_calls_get_distinct_random_request_ids(client):
    image, mask = scene(48, 48)
    ids = {client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="", seed=1,
                          num_inference_steps=1).request_id for _ in range(2)}
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_timed_stage_writes_one_json_object_per_line_and_reraises():
    stream = io.StringIO()
    logger = logging.getLogger("test.unit-test")  # not under "smartedit": leave its stderr handler alone
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter())
    logger.addHandler(handler)
    try:
        with timed_stage(logger, "r1", "work", size=3) as fields:
            fields["extra"] = "yes"
        with pytest.raises(ValueError):
            with timed_stage(logger, None, "work"):
                raise ValueError("broken input")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "r1" and first["size"] == 3 and first["extra"] == "yes"
    assert first["outcome"] == "ok" and first["model"] == "unit-test"
    assert second["request_id"] == "-" and second["outcome"] == "failed" and second["error"] == "broken input"


@pytest.mark.functional
def test_every_request_is_counted_by_how_it_ended_and_why(server, client):
    from smartedit_client import InvalidRequestError

    image, mask = (png_bytes(picture) for picture in scene(64, 64, seed=8))
    expected = {("inpaint", "ok", ""): 1, ("inpaint", "invalid", "num_inference_steps"): 1,
                ("inpaint_stream", "invalid", "num_inference_steps"): 1, ("segment", "invalid", "point_coords"): 1,
                ("inpaint_stream", "ok", ""): 1}
    before = scrape(server)
    client.inpaint(image=image, mask_image=mask, prompt="counted", seed=1, num_inference_steps=STEPS)
    with pytest.raises(InvalidRequestError):
        client.inpaint(image=image, mask_image=mask, prompt="counted", num_inference_steps=0)
    with pytest.raises(InvalidRequestError):
        with client.inpaint_stream(image=image, mask_image=mask, prompt="counted", num_inference_steps=0) as stream:
            list(stream)
    with client.inpaint_stream(image=image, mask_image=mask, prompt="counted", num_inference_steps=STEPS) as stream:
        list(stream)
    with pytest.raises(InvalidRequestError):
        client.segment(image=image, points=[(500, 500)])
    by_entry = lambda text: {key: counted(text, entry=key[0], outcome=key[1], reason=key[2])  # noqa: E731
                             for key in expected}
    grown, after = changes(server, by_entry, before, expected)
    assert grown == expected
    # Each counted once: nothing else grew.
    total = lambda text: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()  # noqa: E731
                             if line.startswith("smartedit_requests_total{"))
    assert total(after) - total(before) == sum(expected.values())

