"""The batched engine as production meets it: a real tritonserver, over gRPC, with the SDK.

Shared UNet calls must not change anyone's result; past its bounds the server refuses at once with
an error the SDK calls ServerOverloadedError; an edit whose caller has gone stops within a step,
shows in the log and the metrics, and leaves the server idle for the next one; the per-request loop
stays one config switch away and gives the same images.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import numpy as np
import pytest
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


def log_entries(log_file, request_id: str, stage: str, wait_s: float = 30.0, count: int = 1) -> list[dict]:
    """The JSON log lines of ``request_id``'s ``stage``, once there are ``count`` of them (an edit of
    several images logs one ``denoise`` line per image); ``wait_s`` only guards against a hang."""
    deadline = time.monotonic() + wait_s
    while True:
        entries = [json.loads(line) for line in log_file.read_text(errors="replace").splitlines()
                   if line.startswith("{") and request_id in line]
        entries = [e for e in entries if e["request_id"] == request_id and e["stage"] == stage]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def wait_idle(server, timeout_s: float = 60.0) -> None:
    """Until the engine holds no edit; ``timeout_s`` only guards against a hang (a test's claim is in
    the steps counted, not in how long this takes on a busy machine)."""
    deadline = time.monotonic() + timeout_s
    while metric_value(scrape(server), "smartedit_scheduler_active_requests") != 0:
        assert time.monotonic() < deadline, "an edit is still denoising"
        time.sleep(0.1)


ROWS = "smartedit_scheduler_unet_batch_rows"


def calls_over(text: str, rows: int) -> float:
    """UNet calls the engine has made with more than ``rows`` rows (``rows``: a bucket of the histogram)."""
    return metric_value(text, ROWS + "_count") - metric_value(text, ROWS + "_bucket", le=str(rows))


def logged_span(line: dict, waited_ms: float = 0.0) -> tuple[datetime, datetime]:
    """(start, end) of what a JSON log line timed, by the server's clock: the line is written as it ends,
    with its ``duration_ms``, of which ``waited_ms`` went before the start (in a queue)."""
    end = datetime.fromisoformat(line["time"])
    return end - timedelta(milliseconds=line["duration_ms"] - waited_ms), end


def spans(entries: list[dict]) -> list[tuple[datetime, datetime]]:
    """When each edit of ``denoise`` log lines was active: from joining the engine's steps to its end."""
    return [logged_span(e, waited_ms=e["queue_ms"]) for e in entries]


@pytest.fixture(scope="module")
def one_lane_server(model_repository, tmp_path_factory):
    """A server whose engine steps every active edit in one lane: the shared server's engine may open a
    second lane from the costs it measures, and then an edit need not share its calls with another."""
    folder = tmp_path_factory.mktemp("one-lane")
    repository = configure_copy(model_repository, folder / "model_repository", {"denoise_engine": {"unet_lanes": 1}})
    with serving(repository, folder / "tritonserver.log") as running:
        yield running


def test_edits_sent_together_equal_the_same_edits_sent_alone(one_lane_server):
    # An edit of the first jobs' size denoises all along (its first step is seen before they are sent, it is
    # cancelled after they are answered): in one lane every step of theirs shares a UNet call with it,
    # however the machine schedules the requests.
    server = one_lane_server
    with InpaintClient(server.address.grpc, timeout_s=120) as client:
        image, mask = scene(64, 64, seed=0)
        anchor = client.inpaint_stream(image=png_bytes(image), mask_image=png_bytes(mask), prompt="anchor", seed=9,
                                       num_inference_steps=900, preview_every=0, request_id="anchor-edit-0001")
        events = iter(anchor)  # held: an event generator let go of closes its stream
        try:
            next(events)
            before = scrape(server)
            with ThreadPoolExecutor(len(MIXED)) as pool:
                together = list(pool.map(lambda job: edit_with(client, job, request_id=f"together-{job['seed']}"),
                                         MIXED))
            after = scrape(server)
        finally:
            anchor.cancel()
        # By the server's log: the anchor was denoising before each job joined and until after each ended.
        (anchored,) = spans(log_entries(server.log_file, "anchor-edit-0001", "denoise"))
        for job in MIXED:
            (active,) = spans(log_entries(server.log_file, f"together-{job['seed']}", "denoise"))
            assert anchored[0] < active[0] and active[1] <= anchored[1], (job, active, anchored)
        alone = [edit_with(client, job) for job in MIXED]
        for job, shared, single in zip(MIXED, together, alone):
            assert shared.png == single.png, job  # byte for byte, whatever shared its UNet calls
            assert shared.seed_used == job["seed"]
        # No one edit has more than 2 rows: each of the 64x64 jobs' steps was a call of more, with the anchor.
        shared_steps = max(job["num_inference_steps"] for job in MIXED if job["size"] == (64, 64))
        assert calls_over(after, 2) - calls_over(before, 2) >= shared_steps


STEPS = "smartedit_scheduler_denoise_steps_total"


@contextmanager
def step_counter_samples(server):
    """Reads the engine's step counter over and over in a thread while the body runs: a list of
    (``time.time()`` just before the read, steps), so that a test can look up how many steps had run by
    an instant the server's log names."""
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            now = time.time()
            samples.append((now, metric_value(scrape(server), STEPS)))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        stop.set()
        sampler.join(30)


def test_an_abandoned_edit_stops_at_its_deadline_and_the_server_is_idle_again(server, client):
    wait_idle(server)  # exact counts below: nothing of an earlier test's may still be denoising
    before = scrape(server)
    cancelled_before = metric_value(before, "smartedit_scheduler_requests_total", outcome="cancelled")
    # 8 variations of 32x32 latents step together, ~0.1 s a step: 60 steps take well over the 2 s timeout
    # (8 x 60 steps: within the server's budget), and a step is long next to a read of the metrics.
    image, mask, timeout_s = *scene(256, 256, seed=21), 2.0
    with step_counter_samples(server) as samples:
        with pytest.raises(RequestTimeoutError):
            client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="abandoned", seed=1,
                           num_images=8, num_inference_steps=60, timeout_s=timeout_s, request_id="abandoned-edit-0001")
        # The server's deadline: the timeout from the start of its first step (preprocess).
        (first,) = log_entries(server.log_file, "abandoned-edit-0001", "preprocess")
        deadline = logged_span(first)[0].timestamp() + timeout_s
        # A read of the counter after it (50 ms after: the log's clock is in whole milliseconds).
        read_after = []
        while not read_after and time.time() < deadline + 60:
            read_after = [steps for moment, steps in samples if moment > deadline + 0.05]
            time.sleep(0.02)
    entries = log_entries(server.log_file, "abandoned-edit-0001", "denoise", count=8)
    after = scrape(server)
    assert len(entries) == 8, entries
    for entry in entries:
        assert entry["outcome"] == "cancelled" and "deadline" in entry["error"], entry
        assert 0 < entry["steps_run"] < 60
    # Stopped at the deadline, counted in steps rather than timed: after it, each variation ran at most the
    # step under way (and one more may have been counted just after the read).
    assert read_after, "no read of the step counter after the deadline"
    assert metric_value(after, STEPS) - read_after[0] <= 2 * 8, (read_after[0], metric_value(after, STEPS))
    assert metric_value(after, "smartedit_scheduler_requests_total", outcome="cancelled") == cancelled_before + 8
    assert metric_value(after, "smartedit_scheduler_active_requests") == 0  # its rows are free

    # The next edit has the server to itself: the steps that ran during it are its own, no more.
    steps_before = metric_value(after, STEPS)
    client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="next", seed=2, num_inference_steps=10)
    assert metric_value(scrape(server), STEPS) == steps_before + 10


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
        try:
            return edit_with(client, job, request_id=f"bounds-{job['seed']}")
        except ServerOverloadedError as error:
            return error

    with InpaintClient(small_server.address.grpc, timeout_s=120) as client:
        with ThreadPoolExecutor(len(jobs)) as pool:
            outcomes = list(pool.map(attempt, jobs))
        refused = [(job, error) for job, error in zip(jobs, outcomes) if isinstance(error, ServerOverloadedError)]
        admitted = [(job, result) for job, result in zip(jobs, outcomes)
                    if not isinstance(result, ServerOverloadedError)]
        assert len(admitted) >= 3 and len(refused) >= 1, [type(o).__name__ for o in outcomes]
        # Refused at once, not after a wait for a place: no admitted edit ended (freeing its place) while
        # the server was refusing one, by the server's own log lines.
        freed = [end for job, _ in admitted
                 for _, end in spans(log_entries(small_server.log_file, f"bounds-{job['seed']}", "denoise"))]
        for job, error in refused:
            assert "server at capacity" in str(error) and error.status == "UNAVAILABLE"
            (line,) = log_entries(small_server.log_file, f"bounds-{job['seed']}", "preprocess")
            assert line["outcome"] == "refused", line
            began, refused_at = logged_span(line)  # preprocess: from its start to the refusal
            assert not [end for end in freed if began <= end <= refused_at], (line, freed)
        metrics = scrape(small_server)
        assert metric_value(metrics, "smartedit_scheduler_requests_total", outcome="refused") == len(refused)
        # Counted where they ended (preprocess, refused before any decoding), with the reason.
        assert metric_value(metrics, "smartedit_requests_total", entry="inpaint", outcome="refused",
                            reason="at_capacity") == len(refused)
        for job, result in admitted:
            assert result.png == edit_with(client, job, num_inference_steps=150).png


@pytest.fixture(scope="module")
def two_lane_server(model_repository, tmp_path_factory):
    """A server whose engine opens its second lane at 2 rows a lane (one edit under guidance), by the
    operator's fixed rule: the shared server's engine chooses its lanes from the costs it measures."""
    folder = tmp_path_factory.mktemp("two-lane")
    repository = configure_copy(model_repository, folder / "model_repository",
                                {"denoise_engine": {"unet_lanes": 2, "lane_min_rows": 2}})
    with serving(repository, folder / "tritonserver.log") as running:
        yield running


def test_served_edits_in_two_lanes_step_in_separate_calls_and_give_the_same_images(server, client, two_lane_server):
    # One request of 4 images: 4 edits of 2 rows admitted together. In one lane every step of theirs
    # would be one call of 8 rows; split into two lanes of 2 edits, no call has more than 4.
    edit = dict(prompt="lanes", num_inference_steps=40, guidance_scale=7.5, seed=40, num_images=4)
    image, mask = scene(128, 128, seed=40)
    with InpaintClient(two_lane_server.address.grpc, timeout_s=120) as lanes:
        served = lanes.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), request_id="two-lanes-0001",
                               **edit)
    entries = log_entries(two_lane_server.log_file, "two-lanes-0001", "denoise", count=4)
    assert len(entries) == 4 and all(e["outcome"] == "ok" for e in entries), entries
    active = spans(entries)
    assert max(began for began, _ in active) < min(ended for _, ended in active), active  # all 4 at once
    metrics = scrape(two_lane_server)  # this server's only edits are these
    assert metric_value(metrics, ROWS + "_count") >= 2 * edit["num_inference_steps"]  # two calls a step
    assert calls_over(metrics, 4) == 0
    # The lanes change which rows share a call, never an image: the one-lane server's bytes.
    alone = client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), **edit)
    assert [i.png for i in served.images] == [i.png for i in alone.images]
    assert [i.seed_used for i in served.images] == [40, 41, 42, 43]


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
