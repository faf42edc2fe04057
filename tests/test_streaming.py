"""The streaming entry (``inpaint_stream``) over a real gRPC stream, through the SDK and the CLI.

Progress after every step, previews at the requested cadence, the unary call's exact bytes at the
end; and a stream that is cancelled, dropped or whose client dies stops its edit within a step.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import png_bytes, scene
from smartedit_client import InvalidRequestError, PreviewEvent, ProgressEvent
from smartedit_client import InpaintResult
from test_engine_serving import log_entries, wait_idle
from test_observability import metric_value, scrape

pytestmark = pytest.mark.functional

EDIT = dict(prompt="a red chair", negative_prompt="ugly", num_inference_steps=7, guidance_scale=7.5, seed=31,
            scheduler="euler")


# Edits a test must stop half-way: 32x32 latents, so that 300 steps take seconds, not a blink.
LONG = (256, 256)


def inputs(size=(64, 64), seed=4):
    image, mask = scene(*size, seed=seed)
    return dict(image=png_bytes(image), mask_image=png_bytes(mask))


def test_progress_every_step_previews_at_their_cadence_and_the_unary_bytes_at_the_end(client):
    with client.inpaint_stream(**inputs(), **EDIT, preview_every=3) as stream:
        events = list(stream)
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    assert [(e.step, e.total_steps) for e in progress] == [(s, 7) for s in range(1, 8)]
    assert [e.step for e in previews] == [3, 6, 7]  # every 3rd step, and the last
    assert all(p.image.size == (8, 8) and p.png.startswith(b"\x89PNG") for p in previews)  # latents: 64 px / 8
    assert isinstance(events[-1], InpaintResult) and events[-1] is stream.result
    unary = client.inpaint(**inputs(), **EDIT)
    assert stream.result.png == unary.png and stream.result.seed_used == unary.seed_used == EDIT["seed"]


def test_preview_every_zero_gives_progress_only(client):
    with client.inpaint_stream(**inputs(), **dict(EDIT, num_inference_steps=3), preview_every=0) as stream:
        events = list(stream)
    assert [type(e).__name__ for e in events] == ["ProgressEvent"] * 3 + ["InpaintResult"]


@pytest.mark.parametrize("change,fragment", [
    (dict(preview_every=-1), "preview_every: must be >= 0"),
    (dict(num_inference_steps=0), "num_inference_steps: must be between 1 and"),
    (dict(image=b"not an image"), "image: is not a PNG, JPEG or WebP image"),
])
def test_a_bad_field_is_invalid_argument_on_the_stream_too(client, change, fragment):
    edit = dict(inputs(), **EDIT)
    edit.update(change)
    with pytest.raises(InvalidRequestError, match=fragment) as caught:
        list(client.inpaint_stream(**edit))
    assert caught.value.status == "INVALID_ARGUMENT"


def _stopped_early(server, request_id: str, total: int) -> dict:
    (entry,) = log_entries(server.log_file, request_id, "denoise")
    assert entry["outcome"] == "cancelled" and "cancelled" in entry["error"], entry
    assert 0 < entry["steps_run"] < total
    return entry


# A step long next to the way a progress event and a cancel travel between the engine and the client:
# 8 variations step together (16 UNet rows of 32x32 latents, ~0.1 s a step), so that the step the client
# has seen is the step the server is at, even on a busy machine. 8 x 60 steps: within the server's budget.
HEAVY = dict(num_images=8, num_inference_steps=60)


def _stopped_within_a_step(server, request_id: str, seen: int, seed: int = EDIT["seed"]) -> list[dict]:
    """The ``denoise`` lines of a ``HEAVY`` edit (of ``seed``) whose client left after seeing step ``seen``,
    checked: every variation cancelled, the first no more than 2 steps past ``seen``."""
    wait_idle(server)
    entries = log_entries(server.log_file, request_id, "denoise", count=HEAVY["num_images"])
    assert len(entries) == HEAVY["num_images"] and all(e["outcome"] == "cancelled" for e in entries), entries
    # Progress follows the first variation (the request's own seed): its next step may have been under way
    # when the cancel came, and the one after sent before the engine looked again; no more.
    (followed,) = [e for e in entries if e["seed"] == seed]
    assert followed["steps_run"] <= seen + 2, (seen, followed)
    # The others stopped at the same turn: a step apart at most (one may have joined a turn before it).
    assert all(e["steps_run"] <= followed["steps_run"] + 1 for e in entries), entries
    return entries


def test_cancel_stops_the_edit_within_a_step(server, client):
    wait_idle(server)  # exact counts below: nothing of an earlier test's may still be denoising
    cancelled_before = metric_value(scrape(server), "smartedit_scheduler_requests_total", outcome="cancelled")
    stream = client.inpaint_stream(**inputs(LONG), **dict(EDIT, **HEAVY), preview_every=0,
                                   request_id="stream-cancel-0001")
    for event in stream:
        if event.step == 3:
            stream.cancel()
            break
    _stopped_within_a_step(server, "stream-cancel-0001", seen=3)
    (stream_entry,) = log_entries(server.log_file, "stream-cancel-0001", "stream")
    assert stream_entry["outcome"] == "cancelled"
    assert metric_value(scrape(server), "smartedit_scheduler_requests_total", outcome="cancelled") \
        == cancelled_before + HEAVY["num_images"]


def test_leaving_the_stream_half_way_closes_it_and_cancels_the_edit(server, client):
    with client.inpaint_stream(**inputs(LONG), **dict(EDIT, num_inference_steps=300), preview_every=0,
                               request_id="stream-dropped-0001") as stream:
        for event in stream:
            if event.step == 2:
                break  # the with-block closes the stream
    _stopped_early(server, "stream-dropped-0001", 300)
    wait_idle(server)


CLIENT_THAT_DIES = textwrap.dedent("""
    import os, signal, sys
    from smartedit_client import InpaintClient
    image, mask = open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
    client = InpaintClient(sys.argv[1])
    stream = client.inpaint_stream(image=image, mask_image=mask, prompt="x", num_inference_steps=300,
                                   preview_every=0, request_id="stream-killed-0001")
    for event in stream:
        if event.step == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # no goodbye: the connection just drops
""")


def test_a_client_that_dies_mid_stream_has_its_edit_stopped(server, tmp_path):
    edit = inputs(LONG)
    (tmp_path / "image.png").write_bytes(edit["image"])
    (tmp_path / "mask.png").write_bytes(edit["mask_image"])
    completed = subprocess.run([sys.executable, "-c", CLIENT_THAT_DIES, server.address.grpc,
                                str(tmp_path / "image.png"), str(tmp_path / "mask.png")], timeout=120)
    assert completed.returncode == -9
    _stopped_early(server, "stream-killed-0001", 300)
    wait_idle(server)


def test_cli_writes_previews_and_the_edit(server, tmp_path):
    edit = inputs()
    (tmp_path / "image.png").write_bytes(edit["image"])
    (tmp_path / "mask.png").write_bytes(edit["mask_image"])
    command = [sys.executable, "-m", "smartedit_client.cli", "--url", server.address.grpc,
               "--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", "a lamp",
               "--steps", "4", "--seed", "3", "--out", str(tmp_path / "out.png"),
               "--previews", str(tmp_path / "previews"), "--preview-every", "2"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["preview-0002.png", "preview-0004.png"]
    assert "step 4/4" in completed.stderr and (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
