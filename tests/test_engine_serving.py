"""The batched engine as production meets it: a real tritonserver, over gRPC, with the SDK.

Shared UNet calls must not change anyone's result; past its bounds the server refuses at once with
an error the SDK calls ServerOverloadedError; an edit whose caller has gone stops within a step,
shows in the log and the metrics, and leaves the server idle for the next one; the per-request loop
stays one config switch away and gives the same images.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from conftest import configure_copy, png_bytes, scene, serving
from smartedit_client import InpaintClient, RequestTimeoutError, ServerOverloadedError
from test_observability import metric_value, scrape

pytestmark = pytest.mark.functional

# Different samplers, step counts, sizes, guidance (1.0: one row, no guidance) and strengths.
MIXED = [
    dict(size=(64, 64), scheduler="ddim", num_inference_steps=6, guidance_scale=7.5, seed=1),
    dict(size=(64, 64), scheduler="euler", num_inference_steps=9, guidance_scale=1.0, seed=2),
    dict(size=(48, 32), scheduler="dpmpp_2m", num_inference_steps=7, guidance_scale=5.0, strength=0.7, seed=3),
    dict(size=(48, 32), scheduler="heun", num_inference_steps=4, guidance_scale=7.5, seed=4),
    dict(size=(80, 48), scheduler="euler_ancestral", num_inference_steps=8, guidance_scale=3.0, seed=5),
    dict(size=(64, 64), scheduler="unipc", num_inference_steps=5, guidance_scale=7.5, seed=6),
]


def edit_with(client, job, **overrides):
    params = dict(job, **overrides)
    image, mask = scene(*params.pop("size"), seed=params["seed"])
    return client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt=f"thing {params['seed']}",
                          **params)


def unet_rows_and_executions(server) -> tuple[int, int]:
    with grpcclient.InferenceServerClient(server.address.grpc) as stats:
        unet = stats.get_inference_statistics("unet").model_stats[0]
    return unet.inference_count, unet.execution_count


def log_entries(log_file, request_id: str, stage: str, wait_s: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + wait_s
    while True:
        entries = [json.loads(line) for line in log_file.read_text(errors="replace").splitlines()
                   if line.startswith("{") and request_id in line]
        entries = [e for e in entries if e["request_id"] == request_id and e["stage"] == stage]
        if entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_edits_sent_together_equal_the_same_edits_sent_alone(server, client):
    rows_before, executions_before = unet_rows_and_executions(server)
    with ThreadPoolExecutor(len(MIXED)) as pool:
        together = list(pool.map(lambda job: edit_with(client, job), MIXED))
    rows, executions = (a - b for a, b in zip(unet_rows_and_executions(server), (rows_before, executions_before)))
    alone = [edit_with(client, job) for job in MIXED]
    for job, shared, single in zip(MIXED, together, alone):
        assert shared.png == single.png, job  # byte for byte, whatever shared its UNet calls
        assert shared.seed_used == job["seed"]
    assert rows / executions > 2, (rows, executions)  # rows of different edits did share calls


def test_an_abandoned_edit_stops_within_two_seconds_and_the_server_is_idle_again(server, client):
    before = scrape(server)
    cancelled_before = metric_value(before, "smartedit_scheduler_requests_total", outcome="cancelled")
    image, mask = scene(256, 256, seed=21)  # 32x32 latents: 200 steps take well over the 1 s timeout
    with pytest.raises(RequestTimeoutError):
        client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="abandoned", seed=1,
                       num_inference_steps=200, timeout_s=1.0, request_id="abandoned-edit-0001")

    (entry,) = log_entries(server.log_file, "abandoned-edit-0001", "denoise")
    assert entry["outcome"] == "cancelled" and "deadline" in entry["error"]
    assert 0 < entry["steps_run"] < 200
    assert entry["duration_ms"] < 1000 + 2000  # stopped within 2 s of the client's 1 s timeout
    after = scrape(server)
    assert metric_value(after, "smartedit_scheduler_requests_total", outcome="cancelled") == cancelled_before + 1
    assert metric_value(after, "smartedit_scheduler_active_requests") == 0  # its rows are free

    # The next edit has the server to itself: the steps that ran during it are its own, no more.
    steps_before = metric_value(after, "smartedit_scheduler_denoise_steps_total")
    client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="next", seed=2, num_inference_steps=10)
    assert metric_value(scrape(server), "smartedit_scheduler_denoise_steps_total") == steps_before + 10


def test_clients_whose_timeouts_cut_edits_short_do_not_take_the_server_down(server, client):
    # Triton 2.51 crashes (SIGSEGV in TRITONBACKEND_ResponseSend) when a call is cancelled just as a
    # response of its is sent (server #7368): the SDK lets the server answer at the deadline, before its
    # own gRPC deadline cancels the call. Large photos, so that timeouts fall in every stage.
    rng = np.random.default_rng(23)
    photo = Image.fromarray(rng.integers(0, 256, (1200, 1800, 3), dtype=np.uint8))
    mask = Image.new("L", photo.size)
    mask.paste(255, (800, 500, 1000, 700))
    image_bytes, mask_bytes = png_bytes(photo), png_bytes(mask)

    def cut_short(n: int) -> str:
        try:
            client.inpaint(image=image_bytes, mask_image=mask_bytes, prompt="cut short", seed=n,
                           num_inference_steps=50, timeout_s=0.2 + (n % 8) * 0.2)
        except RequestTimeoutError:
            return "timed out"
        return "finished"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(cut_short, range(24)))
    assert "timed out" in outcomes
    assert server.process.poll() is None
    assert client.inpaint(image=image_bytes, mask_image=mask_bytes, prompt="after", seed=3,
                          num_inference_steps=2).image.size == photo.size


@pytest.fixture(scope="module")
def small_server(model_repository, tmp_path_factory):
    """A server whose engine takes 2 edits at a time and queues 1 more."""
    folder = tmp_path_factory.mktemp("small")
    repository = configure_copy(model_repository, folder / "model_repository",
                                {"denoise_engine": {"max_active_edits": 2, "max_queued_edits": 1}})
    with serving(repository, folder / "tritonserver.log") as running:
        yield running


def test_past_its_bounds_the_server_refuses_at_once_and_serves_the_admitted_correctly(small_server):
    jobs = [dict(size=(128, 128), scheduler="ddim", num_inference_steps=150, guidance_scale=7.5, seed=s)
            for s in range(8)]

    def attempt(job):
        started = time.perf_counter()
        try:
            return edit_with(client, job), time.perf_counter() - started
        except ServerOverloadedError as error:
            return error, time.perf_counter() - started

    with InpaintClient(small_server.address.grpc, timeout_s=120) as client:
        with ThreadPoolExecutor(len(jobs)) as pool:
            outcomes = list(pool.map(attempt, jobs))
        refused = [(error, elapsed) for error, elapsed in outcomes if isinstance(error, ServerOverloadedError)]
        admitted = [(job, result) for job, (result, _) in zip(jobs, outcomes)
                    if not isinstance(result, ServerOverloadedError)]
        assert len(admitted) >= 3 and len(refused) >= 1, [type(o).__name__ for o, _ in outcomes]
        for error, elapsed in refused:
            assert "server at capacity" in str(error) and error.status == "UNAVAILABLE"
            assert elapsed < 2.0  # refused at once, not after a wait for capacity
        metrics = scrape(small_server)
        assert metric_value(metrics, "smartedit_scheduler_requests_total", outcome="refused") == len(refused)
        # Counted where they ended (preprocess, refused before any decoding), with the reason.
        assert metric_value(metrics, "smartedit_requests_total", entry="inpaint", outcome="refused",
                            reason="at_capacity") == len(refused)
        for job, result in admitted:
            assert result.png == edit_with(client, job, num_inference_steps=150).png


@pytest.fixture(scope="module")
def per_request_server(model_repository, tmp_path_factory):
    from smartedit.export.repository import switch_engine

    folder = tmp_path_factory.mktemp("per-request")
    repository = configure_copy(model_repository, folder / "model_repository", {})
    switch_engine(repository, "per_request", scheduler_instances=2)
    with serving(repository, folder / "tritonserver.log") as running:
        yield running


def test_the_per_request_loop_is_one_switch_away_and_gives_the_same_images(server, client, per_request_server):
    with InpaintClient(per_request_server.address.grpc, timeout_s=120) as per_request:
        for job in MIXED[:3]:
            served = edit_with(per_request, job, request_id=f"per-request-{job['seed']}")
            assert served.png == edit_with(client, job).png, job
        (entry,) = log_entries(per_request_server.log_file, "per-request-3", "denoise")
        assert entry["model"] == "scheduler"  # the loop ran in the scheduler step, not in the engine
