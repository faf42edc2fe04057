"""ControlNet pipelines served (``smartedit export --controlnet``) against diffusers'
``StableDiffusionControlNetInpaintPipeline`` (and ``StableDiffusionXLControlNetInpaintPipeline`` for the SDXL one) on
the same tiny weights, over gRPC with the real client.

The tiny ControlNet's output convolutions are drawn at random (smartedit.export.tiny_controlnet), so a served
edit that dropped the control, or took it from the wrong pixels, would not match.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import png_bytes, scene, serving_export
from reference import diffusers_controlnet_inpaint, psnr
from smartedit.edit.control_images import canny_condition, image_condition, inpaint_condition

CONTROLNET_NAME = "edges"
# The tiny SDXL inpainting model with its own tiny ControlNet, served beside the SD one.
SDXL_PIPELINE, SDXL_CONTROLNET_NAME = "sdxl_controlled", "sdxl_edges"
EDIT = dict(prompt="a red chair", negative_prompt="ugly", num_inference_steps=4, guidance_scale=7.5, seed=7,
            scheduler="ddim")


@pytest.fixture(scope="module")
def controlled_server(tiny_model_dir, tiny_controlnet_dir, tiny_sdxl_dir, tiny_sdxl_controlnet_dir, tmp_path_factory):
    """Pipeline ``controlled`` (the default): the tiny model with the tiny ControlNet; ``SDXL_PIPELINE``: the tiny
    SDXL inpainting model with its tiny ControlNet; exported by the command line."""
    out = tmp_path_factory.mktemp("controlnet") / "model_repository"
    with serving_export("--model", f"controlled={tiny_model_dir}", "--model", f"{SDXL_PIPELINE}={tiny_sdxl_dir}",
                        "--controlnet", f"controlled={CONTROLNET_NAME}={tiny_controlnet_dir}",
                        "--controlnet", f"{SDXL_PIPELINE}={SDXL_CONTROLNET_NAME}={tiny_sdxl_controlnet_dir}",
                        out=out) as running:
        yield running


@pytest.fixture(scope="module")
def controlled_client(controlled_server):
    from smartedit_client import InpaintClient

    with InpaintClient(controlled_server.address.grpc, timeout_s=120) as client:
        yield client


def _served(client, image, mask, **options) -> np.ndarray:
    return np.asarray(client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), **{**EDIT, **options}).image)


def _assert_matches_reference(client, pipeline, controlnet, control, options, *, size=(40, 24), served_as=None,
                              default_strength=1.0):
    """The edit ``options`` under ``control`` (image: a conditioning image of its own; canny; inpaint) served on
    ``served_as`` (the default pipeline when None) >= 40 dB inside the mask and exact outside against diffusers'
    ControlNet inpainting pipeline on ``pipeline`` and ``controlnet``; the same edit without control < 40 dB."""
    image, mask = scene(*size)
    inside = np.asarray(mask) >= 128
    sent = scene(*size, seed=5)[0]
    if control == "image":
        condition, request = image_condition(np.asarray(sent)), {"control_image": png_bytes(sent)}
    elif control == "canny":  # the reference is given the same Canny image the server makes
        condition = image_condition(canny_condition(np.asarray(image), options.get("control_low_threshold", 100),
                                                    options.get("control_high_threshold", 200)))
        request = {"control": "canny"}
    else:
        condition, request = inpaint_condition(np.asarray(image), inside), {"control": "inpaint"}
    chosen = {} if served_as is None else {"pipeline": served_as}
    served = _served(client, image, mask, **request, **options, **chosen)
    control_names = ("guess_mode", "controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")
    edit = {**EDIT, **{key: value for key, value in options.items() if not key.startswith("control") and
                       key not in control_names + ("strength",)}}
    control_options = {key: value for key, value in options.items() if key in control_names}
    reference = diffusers_controlnet_inpaint(pipeline, controlnet, image, mask, condition,
                                             strength=options.get("strength", default_strength), **edit,
                                             **control_options)
    assert psnr(served[inside], reference[inside]) >= 40
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])
    # the control matters: the same edit without it is another picture
    plain = _served(client, image, mask, **chosen, **{key: value for key, value in options.items()
                                                     if key in ("scheduler", "strength", "guidance_scale")})
    assert psnr(plain[inside], reference[inside]) < 40


@pytest.mark.functional
@pytest.mark.parametrize("control,options", [
    ("image", {}),  # the reference's defaults: scale 0.5 over the whole schedule
    ("image", {"controlnet_conditioning_scale": 1.0, "control_guidance_start": 0.2, "control_guidance_end": 0.8,
               "scheduler": "euler"}),
    ("canny", {"control_low_threshold": 50, "control_high_threshold": 150, "controlnet_conditioning_scale": 0.8,
               "strength": 0.6, "guidance_scale": 5.0}),
    ("inpaint", {"controlnet_conditioning_scale": 1.0, "control_guidance_end": 0.5, "scheduler": "dpmpp_2m"}),
    ("image", {"guess_mode": True, "controlnet_conditioning_scale": 0.9}),
])
def test_a_controlled_edit_matches_diffusers_controlnet_inpaint(controlled_client, tiny_pipeline, tiny_controlnet,
                                                                control, options):
    _assert_matches_reference(controlled_client, tiny_pipeline, tiny_controlnet, control, options)


@pytest.mark.functional
@pytest.mark.parametrize("control,options", [
    ("image", {}),  # StableDiffusionXLControlNetInpaintPipeline's defaults: scale 1.0, strength 0.9999
    ("canny", {"control_low_threshold": 50, "control_high_threshold": 150, "controlnet_conditioning_scale": 0.7,
               "control_guidance_start": 0.25, "scheduler": "euler", "guidance_scale": 5.0}),
    ("inpaint", {"guess_mode": True, "controlnet_conditioning_scale": 0.9, "control_guidance_end": 0.75,
                 "scheduler": "dpmpp_2m", "strength": 1.0}),
])
def test_an_sdxl_controlled_edit_matches_diffusers_sdxl_controlnet_inpaint(controlled_client, tiny_sdxl_pipeline,
                                                                           tiny_sdxl_controlnet, control, options):
    _assert_matches_reference(controlled_client, tiny_sdxl_pipeline, tiny_sdxl_controlnet, control, options,
                              size=(64, 48), served_as=SDXL_PIPELINE, default_strength=0.9999)


@pytest.mark.functional
@pytest.mark.parametrize("pipeline,size", [("controlled", (40, 24)), (SDXL_PIPELINE, (64, 48))])
def test_edits_with_and_without_control_batched_together_each_equal_alone(controlled_client, pipeline, size):
    from conftest import assert_together_equals_alone

    image, mask = scene(*size, seed=2)
    edits = [({}, 1), ({"control": "canny"}, 2), ({"control": "inpaint", "controlnet_conditioning_scale": 1.0}, 3),
             ({"control_image": png_bytes(scene(*size, seed=6)[0]), "guess_mode": True}, 4), ({}, 5)]

    def send(options, seed):
        return controlled_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), pipeline=pipeline,
                                         **{**EDIT, "seed": seed, **options}).png

    assert_together_equals_alone(edits, send)


@pytest.mark.functional
def test_a_streamed_controlled_edit_is_the_unary_one(controlled_client):
    image, mask = scene(40, 24, seed=1)
    options = dict(EDIT, control="canny", control_low_threshold=30, control_high_threshold=90)
    with controlled_client.inpaint_stream(image=png_bytes(image), mask_image=png_bytes(mask), **options) as stream:
        streamed = list(stream)[-1]
    unary = controlled_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), **options)
    assert streamed.png == unary.png
    assert unary.parameters["parameters"]["control"] == "canny"
    assert unary.parameters["parameters"]["controlnet"] == CONTROLNET_NAME


@pytest.mark.functional
def test_a_large_photo_is_controlled_in_its_edit_region(controlled_client):
    """A photo larger than the working size is edited as a crop around its mask; the conditioning image sent with it
    is cropped and scaled the same way (tests/test_control.py checks the arithmetic): the control still acts, and
    nothing outside the mask changes."""
    from PIL import Image

    image = scene(600, 400, seed=3)[0]
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (300, 220, 360, 280))
    inside = np.asarray(mask) >= 128
    controlled = controlled_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask),
                                           control_image=png_bytes(scene(600, 400, seed=8)[0]), **EDIT)
    plain = _served(controlled_client, image, mask)
    assert controlled.parameters["parameters"]["control"] == "image"
    assert np.array_equal(np.asarray(controlled.image)[~inside], np.asarray(image)[~inside])
    assert psnr(np.asarray(controlled.image)[inside], plain[inside]) < 40


@pytest.mark.functional
def test_an_edit_controlled_by_a_sent_image_resumes_from_its_checkpoints_with_that_image(
        controlled_server, controlled_client, tmp_path):
    """The checkpoint's state records the conditioning image's digest, as the photo's: the resume sends it again
    (SDK, async SDK, CLI, gateway) and ends on the uninterrupted edit's PNG; without it, with another one, or with
    one for a canny edit's checkpoint, the resume is refused naming control_image."""
    import asyncio
    import base64

    from smartedit_client import AsyncInpaintClient, CheckpointEvent, InvalidRequestError
    from test_gateway import _events, _post_json, gateway

    image, mask = scene(40, 24, seed=5)
    control = png_bytes(scene(40, 24, seed=8)[0])
    photo = dict(image=png_bytes(image), mask_image=png_bytes(mask))
    with controlled_client.inpaint_stream(**photo, **{**EDIT, "num_inference_steps": 6}, control_image=control,
                                          guess_mode=True, checkpoint_every=2, preview_every=0) as stream:
        checkpoints = [event for event in stream if isinstance(event, CheckpointEvent)]
    whole = stream.result.png
    assert [checkpoint.step for checkpoint in checkpoints] == [2, 4]
    for checkpoint in checkpoints:
        assert controlled_client.resume(checkpoint, **photo, control_image=control).png == whole

    async def resumed_async():
        async with AsyncInpaintClient(controlled_server.address.grpc, timeout_s=120) as aio:
            return (await aio.resume(checkpoints[0], **photo, control_image=control)).png
    assert asyncio.run(resumed_async()) == whole

    for sent, fragment in ((None, "is required: the checkpoint's edit was sent with one"),
                           (png_bytes(scene(40, 24, seed=9)[0]), "is not the control_image the checkpoint's edit")):
        with pytest.raises(InvalidRequestError, match=f"^control_image: {fragment}"):
            controlled_client.resume(checkpoints[0], **photo, control_image=sent)
    with controlled_client.inpaint_stream(**photo, **EDIT, control="canny", checkpoint_every=2) as canny:
        canny_checkpoint = [event for event in canny if isinstance(event, CheckpointEvent)][0]
    assert controlled_client.resume(canny_checkpoint, **photo).png == canny.result.png
    with pytest.raises(InvalidRequestError, match="^control_image: is not taken: the checkpoint's edit was sent "
                                                  "without one"):
        controlled_client.resume(canny_checkpoint, **photo, control_image=control)

    # the command line: --resume with --control-image
    for name, data in (("photo", photo["image"]), ("mask", photo["mask_image"]), ("control", control),
                       ("checkpoint.state", checkpoints[1].resume_state)):
        (tmp_path / name).write_bytes(data)
    run = subprocess.run([sys.executable, "-m", "smartedit_client.cli", "--url", controlled_server.address.grpc,
                          "--image", str(tmp_path / "photo"), "--mask", str(tmp_path / "mask"), "--control-image",
                          str(tmp_path / "control"), "--resume", str(tmp_path / "checkpoint.state"), "--out",
                          str(tmp_path / "resumed.png")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "resumed.png").read_bytes() == whole

    # the gateway: a control_image file in the form, or base64 in JSON
    with gateway(controlled_server.address.grpc, tmp_path / "gateway.log") as url:
        run = subprocess.run(["curl", "-sS", "-N", "-F", f"image=@{tmp_path / 'photo'}", "-F",
                              f"mask_image=@{tmp_path / 'mask'}", "-F", f"control_image=@{tmp_path / 'control'}",
                              "-F", f"resume_state=@{tmp_path / 'checkpoint.state'}", f"{url}/edit/resume/stream"],
                             capture_output=True, timeout=120)
        assert run.returncode == 0, run.stderr
        kind, result = _events(run.stdout)[-1]
        assert kind == "result" and base64.b64decode(result["images"][0]["png_base64"]) == whole, result
        body = {name: base64.b64encode(data).decode() for name, data in (
            ("image", photo["image"]), ("mask_image", photo["mask_image"]),
            ("resume_state", checkpoints[0].resume_state))}
        status, _, raw = _post_json(url + "/edit/resume/stream", body)  # the control image left out
        assert status == 400 and json.loads(raw)["field"] == "control_image", raw
        status, _, raw = _post_json(url + "/edit/resume/stream",
                                    {**body, "control_image": base64.b64encode(control).decode()})
        assert status == 200 and base64.b64decode(_events(raw)[-1][1]["images"][0]["png_base64"]) == whole


@pytest.mark.functional
@pytest.mark.parametrize("options,field,fragment", [
    ({"control": "image"}, "control_image", "is required for control image"),
    ({"control_image": "small"}, "control_image", "must be the same size"),
    ({"control_image": b"not an image"}, "control_image", "is not a PNG"),
    ({"controlnet": "depth"}, "controlnet", f"its ControlNet: '{CONTROLNET_NAME}'"),
    ({"control": "canny", "control_guidance_start": 0.6, "control_guidance_end": 0.5}, "control_guidance_start",
     "must be below"),
    ({"control": "canny", "control_image": "same"}, "control_image", "makes its own conditioning image"),
    ({"control": "depth"}, "control", "unknown control"),
    ({"controlnet_conditioning_scale": -1.0}, "controlnet_conditioning_scale", "between 0 and 10"),
    ({"task": "text_edit"}, "task", "not served by this pipeline"),
    ({"control": "none", "control_image": "same"}, "control_image", "leaves the edit uncontrolled"),
    ({"controlnet_conditioning_scale": 0.9}, "controlnet_conditioning_scale", "does nothing with control none"),
    ({"control": "inpaint", "control_low_threshold": 10}, "control_low_threshold", "it needs control canny"),
    ({"control": "canny", "control_low_threshold": 200, "control_high_threshold": 100}, "control_low_threshold",
     "is above control_high_threshold"),
    ({"control": "canny", "control_guidance_end": 0.0}, "control_guidance_end", "must be below"),
    ({"control_image": "16-bit"}, "control_image", "send it as an 8-bit PNG"),
])
def test_bad_control_is_invalid_argument_naming_the_field(controlled_client, options, field, fragment):
    from smartedit_client import InvalidRequestError

    image, mask = scene(40, 24)
    deep = io.BytesIO()
    Image.fromarray(np.full((24, 40), 4000, dtype=np.uint16)).save(deep, format="PNG")  # mode I;16: a raw depth map
    sizes = {"small": png_bytes(scene(24, 24)[0]), "same": png_bytes(image), "16-bit": deep.getvalue()}
    options = {key: sizes.get(value, value) if isinstance(value, str) else value for key, value in options.items()}
    streamed = options.pop("checkpoint_every", None)
    with pytest.raises(InvalidRequestError) as raised:
        if streamed:  # the stream's input
            with controlled_client.inpaint_stream(image=png_bytes(image), mask_image=png_bytes(mask), **EDIT, **options,
                                                  checkpoint_every=streamed) as stream:
                list(stream)
        else:
            controlled_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), **{**EDIT, **options})
    assert str(raised.value).startswith(f"{field}:") and fragment in str(raised.value), str(raised.value)
    # and the server goes on serving
    assert controlled_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), **EDIT).image.size == (40, 24)


@pytest.mark.functional
def test_server_info_names_the_pipelines_controlnet_and_its_inputs(controlled_client):
    info = controlled_client.server_info()
    assert info.controlnets == (CONTROLNET_NAME,)
    assert info.parameters["controlnet"].default == CONTROLNET_NAME
    assert info.parameters["controlnet_conditioning_scale"].default == 0.5
    assert set(info.parameters["control"].choices) == {"none", "image", "canny", "inpaint"}
    assert "text_edit" not in info.tasks
    sdxl = controlled_client.server_info(pipeline=SDXL_PIPELINE)
    assert (sdxl.family, sdxl.controlnets) == ("sdxl-inpaint", (SDXL_CONTROLNET_NAME,))
    assert sdxl.parameters["controlnet"].default == SDXL_CONTROLNET_NAME
    # StableDiffusionXLControlNetInpaintPipeline's default scale, SD's pipeline's 0.5
    assert sdxl.parameters["controlnet_conditioning_scale"].default == 1.0


@pytest.mark.functional
def test_the_gateway_takes_a_control_image_file_or_base64_and_control_as_a_field(controlled_server, controlled_client,
                                                                                 tmp_path):
    import base64

    from test_gateway import _post_json, gateway

    image, mask = scene(40, 24, seed=4)
    control = scene(40, 24, seed=9)[0]
    for name, picture in (("image", image), ("mask", mask), ("control", control)):
        (tmp_path / f"{name}.png").write_bytes(png_bytes(picture))
    expected = controlled_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask),
                                         control_image=png_bytes(control), **EDIT).png
    canny = controlled_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), control="canny", **EDIT).png
    with gateway(controlled_server.address.grpc, tmp_path / "gateway.log") as url:
        out = tmp_path / "out.png"
        run = subprocess.run(["curl", "-sS", "-f", "-F", f"image=@{tmp_path / 'image.png'}",
                              "-F", f"mask_image=@{tmp_path / 'mask.png'}",
                              "-F", f"control_image=@{tmp_path / 'control.png'}",
                              *sum((["-F", f"{key}={value}"] for key, value in EDIT.items()), []),
                              f"{url}/edit/inpaint", "-o", str(out)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert out.read_bytes() == expected
        body = {"image": base64.b64encode(png_bytes(image)).decode(),
                "mask_image": base64.b64encode(png_bytes(mask)).decode(), **EDIT}
        status, _, raw = _post_json(url + "/edit/inpaint", {**body, "control": "canny"})
        assert status == 200 and raw == canny
        status, _, raw = _post_json(url + "/edit/inpaint", {**body, "control_image": "data:image/png;base64,"
                                                            + base64.b64encode(png_bytes(control)).decode()})
        assert status == 200 and raw == expected
        status, _, raw = _post_json(url + "/edit/inpaint", {**body, "control": "image"})
        assert status == 400 and json.loads(raw)["field"] == "control_image", raw


@pytest.mark.functional
def test_a_plain_edits_png_carries_no_control_and_replays_on_a_plain_pipeline(controlled_client, client):
    """An edit without control on a ControlNet pipeline records no control setting (they did nothing), so its PNG
    replays anywhere; a pipeline without a ControlNet refuses control inputs by name."""
    from smartedit_client import InvalidRequestError

    image, mask = scene(40, 24, seed=3)
    plain = controlled_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), **EDIT)
    record = plain.parameters["parameters"]
    assert all(record[name] is None for name in ("control", "controlnet", "controlnet_conditioning_scale",
                                                 "control_guidance_start", "guess_mode", "control_low_threshold"))
    assert client.replay(plain.png, image=png_bytes(image), mask_image=png_bytes(mask)).image.size == (40, 24)
    canny = controlled_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), control="canny", **EDIT)
    assert canny.parameters["parameters"]["controlnet_conditioning_scale"] == 0.5
    assert controlled_client.replay(canny.png, image=png_bytes(image), mask_image=png_bytes(mask)).png == canny.png
    for options, field in (({"control": "canny"}, "control"), ({"control_image": png_bytes(image)}, "control_image"),
                           ({"guess_mode": True}, "guess_mode")):
        with pytest.raises(InvalidRequestError, match=f"^{field}: is not taken by this pipeline .it serves no "
                                                      f"ControlNet"):
            client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), **EDIT, **options)


@pytest.mark.browser
def test_the_editor_sends_a_control_image_and_resumes_its_checkpoints_with_it(controlled_server, browser, tmp_path):
    """In a real browser: a ControlNet pipeline's editor offers a control image; the edit sends it (the result PNG
    records control image), a checkpoint continued sends it again and ends on the uninterrupted edit's PNG, and
    once removed the next edit sends none."""
    from playwright.sync_api import expect

    from test_editor import _download, _open, _paint, _run_to_result, _screenshot, offline_page
    from test_gateway import gateway

    (tmp_path / "photo.png").write_bytes(png_bytes(scene(256, 192, seed=3)[0]))
    control = png_bytes(scene(256, 192, seed=8)[0])
    (tmp_path / "edges.png").write_bytes(control)
    with gateway(controlled_server.address.grpc, tmp_path / "gateway.log") as url, \
            offline_page(browser, url) as page:
        _open(page, url, tmp_path / "photo.png")
        expect(page.locator("#control-image-choice")).to_be_visible()
        page.set_input_files("#control_image", str(tmp_path / "edges.png"))
        expect(page.locator("#control-image-name")).to_have_text("edges.png")
        _paint(page, (0.2, 0.3), (0.6, 0.6))
        sent = []
        page.on("request", lambda request: sent.append((request.url, request.post_data_buffer))
                if request.method == "POST" and "/edit/" in request.url else None)
        _run_to_result(page, prompt="a wooden bench", num_inference_steps=4, seed=7, preview_every=0,
                       checkpoint_every=2)
        _screenshot(page, "editor-control-image.png")
        _, whole = _download(page, tmp_path / "whole.png")
        # (Chromium leaves a file's bytes out of the request it reports: the record says what the server took)
        assert b'name="control_image"' in sent[-1][1]
        assert json.loads(Image.open(io.BytesIO(whole)).text["smartedit"])["parameters"]["control"] == "image"
        page.locator("#checkpoint-list li").first.locator("button.continue-checkpoint").click()
        edits = page.locator("#history li").count()
        page.click("#resume")
        expect(page.locator("#history li")).to_have_count(edits + 1, timeout=120_000)
        _, resumed = _download(page, tmp_path / "resumed.png")
        assert sent[-1][0].endswith("/edit/resume/stream") and b'name="control_image"' in sent[-1][1]
        assert resumed == whole  # a resume without the control image is refused: it went again
        page.click("#control-image-clear")
        expect(page.locator("#control-image-name")).to_have_text("none")
        _run_to_result(page, prompt="a wooden bench", num_inference_steps=4, seed=7, checkpoint_every=0)
        _, plain = _download(page, tmp_path / "plain.png")
        assert b'name="control_image"' not in sent[-1][1]
        assert json.loads(Image.open(io.BytesIO(plain)).text["smartedit"])["parameters"]["control"] is None


@pytest.fixture(scope="module")
def control_repository(tiny_model_dir, tiny_controlnet_dir, tmp_path_factory):
    """The tiny model with the tiny ControlNet alone (one pipeline: a quicker start), for the restart group."""
    from smartedit.export.pipeline_loader import attach_controlnet, load_pipeline
    from smartedit.export.repository import PipelineSource, RepositoryOptions, build_pipelines_repository

    pipeline = load_pipeline(tiny_model_dir)
    attach_controlnet(pipeline, tiny_controlnet_dir)
    out = tmp_path_factory.mktemp("control-restart") / "model_repository"
    return build_pipelines_repository([PipelineSource("controlled", pipeline, "tiny", controlnet=CONTROLNET_NAME)], out,
                                      RepositoryOptions(verify=False, segmentation=False))


@pytest.mark.restart
def test_a_controlnet_pipelines_engine_killed_mid_edit_recovers_and_a_stop_finishes_controlled_edits(
        control_repository, tmp_path):
    """Production faults on a ControlNet pipeline, under controlled edits of each kind streaming at once: the
    engine's process killed (each edit fails saying so, readiness leaves 200, a controlled edit succeeds again),
    then SIGTERM mid-edit (every edit in flight finishes under its control, serve exits 0)."""
    import os
    import signal
    import threading
    import time

    from smartedit_client import InpaintClient, ProgressEvent, ServerUnavailableError, SmartEditError

    from test_recovery import recover, stub_pid, tritonserver_of, wait_for_log, watched

    image, mask = (png_bytes(picture) for picture in scene(256, 256))
    controls = {"image": {"control_image": png_bytes(scene(256, 256, seed=8)[0])}, "canny": {"control": "canny"},
                "inpaint": {"control": "inpaint"}, "none": {}}

    def stream_all(address):
        """Each control's streamed edit (60 steps) in a thread; returns once each has made a step."""
        outcomes, stepped, threads = {}, {name: threading.Event() for name in controls}, []

        def stream(name):
            try:
                with InpaintClient(address, timeout_s=300) as client, client.inpaint_stream(
                        image=image, mask_image=mask, prompt="a bench", num_inference_steps=60, seed=3,
                        preview_every=0, **controls[name]) as edit:
                    for event in edit:
                        if isinstance(event, ProgressEvent):
                            stepped[name].set()
                outcomes[name] = edit.result.parameters["parameters"]["control"]
            except SmartEditError as error:
                outcomes[name] = error
            stepped[name].set()

        threads = [threading.Thread(target=stream, args=(name,)) for name in controls]
        for thread in threads:
            thread.start()
        assert all(event.wait(120) for event in stepped.values())
        return outcomes, threads

    with watched(control_repository, tmp_path) as server:
        address = f"127.0.0.1:{server['grpc']}"
        outcomes, threads = stream_all(address)
        log_before = len(server["log"].read_text())
        killed_at = time.monotonic()
        os.kill(stub_pid(tritonserver_of(server["process"].pid), "denoise_engine"), signal.SIGKILL)
        for thread in threads:
            thread.join(300)
        took_s, left_ready = recover(server, killed_at)  # a plain edit succeeds again; readiness left 200
        assert took_s != float("inf") and left_ready, server["log"].read_text()[-3000:]
        # Triton 2.51 aborts now and then when it lets go of a dead process (test_recovery.py says when): the
        # edits it caught then cannot reach the server rather than hear of the death.
        aborted = "lock_exception" in server["triton_log"].read_text()
        assert all(isinstance(error, ServerUnavailableError) and (
            "process died while the edit ran" in str(error) or aborted and "cannot reach" in str(error))
            for error in outcomes.values()), outcomes
        with InpaintClient(address, timeout_s=60) as client:
            again = client.inpaint(image=image, mask_image=mask, prompt="a bench", num_inference_steps=4, seed=1,
                                   **controls["image"])
        assert again.parameters["parameters"]["control"] == "image"
        print(f"edits succeed again {took_s:.1f} s after the engine's kill")
        # done with the recovery (serve opens its gate after proving the new process) before the stop
        assert wait_for_log(server, log_before, "denoise_engine: edits are served again",
                            "tritonserver restarted and ready"), server["log"].read_text()[-3000:]

        outcomes, threads = stream_all(address)
        server["process"].send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(300)
        assert server["process"].wait(timeout=120) == 0
        assert outcomes == {"image": "image", "canny": "canny", "inpaint": "inpaint", "none": None}, outcomes
