"""Locust load test of a SmartEdit server over gRPC, through the client SDK.

    locust -f loadtests/locustfile.py --host 127.0.0.1:8001 --headless --run-time 60s --users 8

``--host`` is the server's gRPC address (``host:port``, no scheme). Normally started through
``loadtests/run.py``, which adds the CSV/HTML reports and prints the latency table.

The user sends a weighted mix of the product's edits (region edits, object removals, background
replacements) at several sizes and step counts; ``--workload`` picks sizes and steps that suit
the served model (``tiny`` for the embedded test model on a CPU, ``sd15`` for a 512 px model on a
GPU). Load grows in steps (``StepLoadShape``) up to ``--users``, for ``--run-time``.
"""

from __future__ import annotations

# Locust has already monkey-patched the standard library with gevent when it imports this file.
# gRPC runs its own threads unless told to cooperate with gevent: without this, every request of
# every simulated user would run one at a time. It must happen before any channel exists.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import lru_cache  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402
from locust import LoadTestShape, User, between, events, task  # noqa: E402
from locust.stats import CSV_STATS_INTERVAL_SEC  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from smartedit_client import InpaintClient, SmartEditError  # noqa: E402


@dataclass(frozen=True)
class Workload:
    sizes: tuple[tuple[int, int], ...]  # (width, height)
    steps: tuple[int, ...]


WORKLOADS = {
    "tiny": Workload(sizes=((64, 64), (96, 64), (64, 96)), steps=(4, 8)),
    # The 12 MP phone photo is edited at the server's working resolution (512 px): as a crop around the
    # mask for edits and removals, downscaled whole for background replacement (a mask over most of it).
    # Its GPU cost is a 512 px edit's; decoding it and writing its PNG are the server's CPU work.
    "sd15": Workload(sizes=((512, 512), (768, 512), (512, 768), (4032, 3024)), steps=(20, 30, 50)),
}


@events.init_command_line_parser.add_listener
def _add_arguments(parser):
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny", include_in_web_ui=True,
                        help="sizes and step counts of the request mix (tiny: embedded CPU model; sd15: 512 px GPU)")
    parser.add_argument("--step-users", type=int, default=2, include_in_web_ui=True,
                        help="StepLoadShape: users added at each step")
    parser.add_argument("--step-seconds", type=float, default=30.0, include_in_web_ui=True,
                        help="StepLoadShape: seconds between steps")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="per-edit timeout, seconds")
    parser.add_argument("--grpc-ssl", action="store_true", default=False, help="TLS to the gRPC endpoint")
    parser.add_argument("--summary-json", default="", help="write the final per-name latency summary here")


@events.quitting.add_listener
def _final_reports(environment, **_kwargs):
    """At exit, when every user has stopped: the exact summary, and a complete CSV.

    Locust's CSV writer refreshes its files once a second and is not run again at exit, so the
    last second of requests would be missing from ``*_stats.csv``: let it run once more.
    """
    gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.25)
    path = environment.parsed_options.summary_json
    if path:
        entries = sorted(environment.stats.entries.values(), key=lambda e: e.name) + [environment.stats.total]
        with open(path, "w") as handle:
            json.dump([_summary(entry) for entry in entries], handle, indent=1)


def _summary(entry) -> dict:
    return {
        "name": entry.name, "requests": entry.num_requests, "failures": entry.num_failures,
        "p50_ms": entry.get_response_time_percentile(0.50), "p95_ms": entry.get_response_time_percentile(0.95),
        "p99_ms": entry.get_response_time_percentile(0.99), "mean_ms": round(entry.avg_response_time, 1),
        "requests_per_s": round(entry.total_rps, 3),
    }


@lru_cache(maxsize=None)
def scene_png(width: int, height: int) -> bytes:
    """A synthetic photo-like scene (gradient sky, ground, a subject), PNG-encoded once per size."""
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = (1 - rows) * np.array([110, 160, 230]) + rows * np.array([200, 220, 245])
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(height * 0.65), width, height], fill=(90, 140, 70))
    draw.rectangle(subject_box(width, height), fill=(150, 90, 60))
    return _png(image)


def subject_box(width: int, height: int) -> list[int]:
    return [int(width * 0.3), int(height * 0.35), int(width * 0.65), int(height * 0.85)]


@lru_cache(maxsize=None)
def mask_png(kind: str, width: int, height: int) -> bytes:
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "edit":  # repaint the subject
        draw.rectangle(subject_box(width, height), fill=255)
    elif kind == "removal":  # a small object to erase
        draw.ellipse([int(width * 0.7), int(height * 0.1), int(width * 0.85), int(height * 0.3)], fill=255)
    elif kind == "background":  # task replace_background: the mask marks the subject to keep
        draw.rectangle(subject_box(width, height), fill=255)
    else:
        raise ValueError(f"unknown edit kind {kind!r}")
    return _png(mask)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


PROMPTS = {
    "edit": ("a red leather armchair", "a wooden park bench", "a potted olive tree"),
    "removal": ("",),  # task remove: an empty prompt takes the server's neutral one
    "background": ("a beach at sunset", "a snowy mountain valley", "a modern office"),
}


class _Drain:
    """Edits in flight, and whether the run is draining: when the time is up, users send nothing new
    and the run ends once the edits in flight have their answers. Cutting them off would cancel calls
    as their responses are sent, which can crash Triton 2.51 (server issue #7368)."""

    in_flight = 0
    draining = False


class InpaintUser(User):
    """One client application: sends an edit, waits for it, pauses briefly, sends the next."""

    wait_time = between(0.1, 0.5)

    def on_start(self):
        options = self.environment.parsed_options
        self.workload = WORKLOADS[options.workload]
        self.client = InpaintClient(self.host, timeout_s=options.request_timeout, ssl=options.grpc_ssl)

    def on_stop(self):
        self.client.close()

    def _send(self, kind: str, **overrides):
        if _Drain.draining:
            return
        _Drain.in_flight += 1
        try:
            self._send_edit(kind, **overrides)
        finally:
            _Drain.in_flight -= 1

    def _send_edit(self, kind: str, **overrides):
        width, height = random.choice(self.workload.sizes)
        steps = random.choice(self.workload.steps)
        request = dict(image=scene_png(width, height), mask_image=mask_png(kind, width, height),
                       prompt=random.choice(PROMPTS[kind]), num_inference_steps=steps, **overrides)
        name = f"{kind} {width}x{height}" + (f" x{overrides['num_images']}" if "num_images" in overrides else "")
        started = time.perf_counter()
        response_length, exception = 0, None
        try:
            result = self.client.inpaint(**request)
            response_length = len(result.png)
        except SmartEditError as error:
            exception = error
        # Locust knows nothing of gRPC: report each edit ourselves, timed as the client saw it.
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - started) * 1000.0,
            response_length=response_length, exception=exception, context={"steps": steps})

    @task(4)
    def region_edit(self):
        self._send("edit", negative_prompt="blurry, low quality", mask_blur=4)

    @task(1)
    def region_edit_variations(self):
        self._send("edit", negative_prompt="blurry, low quality", num_images=2)

    @task(3)
    def object_removal(self):
        self._send("removal", task="remove", mask_grow=6)

    @task(2)
    def background_replacement(self):
        self._send("background", task="replace_background", mask_blur=6)


class StepLoadShape(LoadTestShape):
    """``--step-users`` more users every ``--step-seconds``, up to ``--users``, for ``--run-time``."""

    use_common_options = True  # reads --users and --run-time

    def tick(self):
        options = self.runner.environment.parsed_options
        elapsed = self.get_run_time()
        if options.run_time and elapsed >= options.run_time:
            _Drain.draining = True
            if _Drain.in_flight == 0 or elapsed >= options.run_time + options.request_timeout:
                return None
            return self.get_current_user_count(), max(options.step_users, 1)  # answers still to come
        max_users = options.num_users or options.step_users
        users = min(max_users, options.step_users * (1 + math.floor(elapsed / options.step_seconds)))
        return users, max(options.step_users, 1)  # spawn each step's users at once
