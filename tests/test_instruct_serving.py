"""Instruction edits (task ``instruct``) through the real server: a tiny InstructPix2Pix model (8-channel UNet,
pipeline ``instruct``, the first) beside the tiny SD inpainting model (``tiny``) in one repository, against
diffusers' ``StableDiffusionInstructPix2PixPipeline`` on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import assert_together_equals_alone, png_bytes, scene
from reference import diffusers_instruct, psnr
from smartedit.edit.masks import shape_mask
from test_resume_serving import assert_every_checkpoint_resumes

pytestmark = pytest.mark.functional

EDIT = dict(prompt="make it snow", num_inference_steps=5, seed=1234)


@pytest.fixture
def instruct_client(instruct_server):
    from smartedit_client import InpaintClient

    with InpaintClient(instruct_server.address.grpc, timeout_s=120) as client:
        yield client


def test_the_server_says_which_pipeline_takes_instructions_and_the_image_guidance_scale(instruct_client):
    info = instruct_client.server_info()
    assert (info.family, info.model, info.tasks) == ("instruct-pix2pix", "tiny InstructPix2Pix", ("instruct",))
    assert info.parameters["image_guidance_scale"].default == 1.5
    assert info.parameters["task"].default == "instruct"  # its only task is its default
    sd = instruct_client.server_info(pipeline="tiny")
    assert sd.tasks == ("inpaint", "remove", "replace_background")
    assert "image_guidance_scale" not in sd.parameters


# (sampler, guidance_scale, image_guidance_scale): both guided, and each scale turning guidance off as
# diffusers does (guidance_scale <= 1, or image_guidance_scale < 1: one row, no guidance at all).
SCALES = [("euler", 7.5, 1.5), ("ddim", 3.0, 2.5), ("ddim", 7.5, 0.5), ("euler", 1.0, 1.5)]


@pytest.mark.parametrize("scheduler, guidance_scale, image_guidance_scale", SCALES)
def test_an_instruction_edit_of_the_whole_photo_matches_diffusers(instruct_client, tiny_instruct_pipeline, scheduler,
                                                                  guidance_scale, image_guidance_scale):
    image, _ = scene(64, 48, seed=4)
    edit = dict(EDIT, scheduler=scheduler, guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale)
    served = instruct_client.inpaint(image=image, **edit)  # no mask: the whole photo
    reference = diffusers_instruct(tiny_instruct_pipeline, image, negative_prompt=None, **edit)
    assert served.parameters["parameters"]["task"] == "instruct"
    assert psnr(np.asarray(served.image), reference) >= 40


def test_each_guidance_scale_changes_the_edit_past_the_parity_margin(instruct_client, tiny_instruct_pipeline):
    """The parity above could fail: on these weights diffusers' own results for other scales, or for another
    negative prompt, lie outside its 40 dB."""
    image, _ = scene(64, 48, seed=4)
    edit = dict(EDIT, scheduler="euler")
    served = np.asarray(instruct_client.inpaint(image=image, guidance_scale=7.5, image_guidance_scale=1.5,
                                                **edit).image)
    for other in (dict(guidance_scale=3.0, image_guidance_scale=1.5),
                  dict(guidance_scale=7.5, image_guidance_scale=5.0),
                  dict(guidance_scale=7.5, image_guidance_scale=1.5, negative_prompt="blurry")):
        reference = diffusers_instruct(tiny_instruct_pipeline, image, **{"negative_prompt": None, **other}, **edit)
        assert psnr(served, reference) < 40, other


def test_with_a_mask_only_the_masked_part_changes(instruct_client, tiny_instruct_pipeline):
    image, mask = scene(64, 48, seed=6)
    edit = dict(EDIT, scheduler="ddim", guidance_scale=7.5, image_guidance_scale=1.5, negative_prompt="blurry")
    served = np.asarray(instruct_client.inpaint(image=image, mask_image=mask, **edit).image)
    reference = diffusers_instruct(tiny_instruct_pipeline, image, **edit)
    inside = np.asarray(mask) >= 128
    assert psnr(served[inside], reference[inside]) >= 40
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])
    # grown and feathered: still nothing past the feather changes
    feathered = np.asarray(instruct_client.inpaint(image=image, mask_image=mask, mask_grow=4, mask_blur=4,
                                                   **edit).image)
    reach = shape_mask(inside, invert=False, grow_by=4 + 4)
    assert np.array_equal(feathered[~reach], np.asarray(image)[~reach])
    grown_only = reach & ~inside
    assert not np.array_equal(feathered[grown_only], np.asarray(image)[grown_only])  # the grown edge is edited


def test_a_photo_larger_than_the_working_size_comes_back_at_its_size_and_replays(instruct_client):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (300, 420, 3), dtype=np.uint8))  # past the tiny 256² area
    result = instruct_client.inpaint(image=image, num_inference_steps=3, seed=5, prompt="turn it blue")
    assert result.image.size == image.size
    assert instruct_client.replay(result.png, image=image).png == result.png


# (pipeline, task, size, sampler, steps, guidance_scale, image_guidance_scale): instruction edits of both row
# counts, beside inpainting edits of the other pipeline.
BATCHED_EDITS = [
    ("instruct", "instruct", (64, 48), "euler", 4, 7.5, 1.5),
    ("instruct", "instruct", (64, 48), "ddim", 5, 3.0, 2.0),
    ("instruct", "instruct", (48, 64), "dpmpp_2m", 3, 7.5, 0.5),
    ("instruct", "instruct", (64, 48), "euler_ancestral", 4, 1.0, 1.5),
    ("tiny", "inpaint", (64, 48), "euler", 4, 7.5, None),
    ("tiny", "remove", (64, 48), "ddim", 4, 7.5, None),
]


def _batched_edit(client, pipeline, task, size, scheduler, steps, guidance_scale, image_guidance_scale) -> bytes:
    image, mask = scene(*size, seed=steps)
    options = {} if image_guidance_scale is None else dict(image_guidance_scale=image_guidance_scale)
    return client.inpaint(image=image, mask_image=None if task == "instruct" else mask, prompt="a lamp",
                          pipeline=pipeline, task=task, scheduler=scheduler, num_inference_steps=steps,
                          guidance_scale=guidance_scale, seed=steps, **options).png


def test_instruction_edits_sent_together_equal_the_same_edits_sent_alone(instruct_client):
    assert_together_equals_alone(BATCHED_EDITS, lambda *edit: _batched_edit(instruct_client, *edit))


def test_streaming_an_instruction_edit_sends_previews_and_the_unary_bytes(instruct_client):
    from smartedit_client import InpaintResult, PreviewEvent

    image, _ = scene(64, 48, seed=2)
    edit = dict(EDIT, scheduler="euler")
    with instruct_client.inpaint_stream(image=image, preview_every=2, **edit) as stream:
        events = list(stream)
    assert any(isinstance(event, PreviewEvent) for event in events)
    assert isinstance(events[-1], InpaintResult)
    assert events[-1].png == instruct_client.inpaint(image=image, **edit).png


@pytest.mark.parametrize("pipeline, options, message", [
    ("instruct", dict(task="inpaint"), "task: inpaint is not served by this pipeline (family instruct-pix2pix); "
                                       "its tasks: instruct"),
    ("instruct", dict(strength=0.5), "strength: 0.5 is not taken by task instruct"),
    ("instruct", dict(image_guidance_scale=-1.0), "image_guidance_scale: must be >= 0, got -1.0"),
    ("instruct", dict(invert_mask=True), "invert_mask: true needs a mask_image to invert"),
    ("tiny", dict(task="instruct"), "task: instruct is not served by this pipeline (family sd-inpaint); its tasks: "
                                    "inpaint, remove, replace_background"),
    ("tiny", dict(image_guidance_scale=2.0), "image_guidance_scale: is not taken by this pipeline (family sd-inpaint)"),
    ("tiny", {}, "mask_image: is required for task inpaint (only tasks instruct and text_edit edit the whole photo "
                 "without one)"),
])
def test_bad_instruction_requests_are_refused_naming_the_field(instruct_client, pipeline, options, message):
    from smartedit_client import InvalidRequestError

    image, _ = scene(64, 48)
    with pytest.raises(InvalidRequestError) as caught:
        instruct_client.inpaint(image=image, prompt="x", pipeline=pipeline, num_inference_steps=2, **options)
    assert str(caught.value).startswith(message), str(caught.value)
    # and the server goes on serving
    assert instruct_client.inpaint(image=image, prompt="x", num_inference_steps=2, seed=1).image.size == image.size


def test_an_inpainting_pipelines_pngs_carry_no_instruction_parameter_and_replay(instruct_client):
    image, mask = scene(64, 48, seed=8)
    result = instruct_client.inpaint(image=image, mask_image=mask, prompt="a lamp", pipeline="tiny",
                                     num_inference_steps=3, seed=2)
    assert result.parameters["parameters"]["image_guidance_scale"] is None
    assert instruct_client.replay(result.png, image=image, mask_image=mask, pipeline="tiny").png == result.png


def test_the_gateway_takes_an_instruction_edit_without_a_mask(instruct_server, instruct_client, tmp_path):
    import base64
    import json
    import urllib.request

    from conftest import png_bytes
    from test_gateway import _post_json, gateway

    image, mask = scene(64, 48, seed=6)
    edit = dict(prompt="make it night", seed=8, num_inference_steps=4, image_guidance_scale=2.0)
    expected = instruct_client.inpaint(image=png_bytes(image), **edit).png
    with gateway(instruct_server.address.grpc, tmp_path / "gateway.log") as url:
        status, _, answer = _post_json(url + "/edit/inpaint", dict(edit, image=base64.b64encode(png_bytes(image))
                                                                    .decode()))
        assert status == 200 and answer == expected, answer[:200]
        # the SD pipeline needs its mask: refused by the server, naming the field
        status, _, answer = _post_json(url + "/edit/inpaint", dict(prompt="a lamp", pipeline="tiny",
                                                                    image=base64.b64encode(png_bytes(image)).decode()))
        assert status == 400 and json.loads(answer)["field"] == "mask_image", answer
        with urllib.request.urlopen(url + "/openapi.json", timeout=30) as response:
            schema = json.load(response)
    body = schema["paths"]["/edit/inpaint"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["image", "prompt"] and "image_guidance_scale" in body["properties"]


def test_the_cli_edits_by_instruction_without_a_mask_and_names_a_mask_an_inpaint_needs(instruct_server,
                                                                                       instruct_client, tmp_path):
    import subprocess
    import sys

    image, _ = scene(64, 48, seed=9)
    image.save(tmp_path / "in.png")
    base = [sys.executable, "-m", "smartedit_client.cli", "--url", instruct_server.address.grpc, "--image",
            str(tmp_path / "in.png"), "--prompt", "make it winter", "--steps", "3", "--seed", "4"]
    done = subprocess.run(base + ["--image-guidance-scale", "1.8", "--out", str(tmp_path / "out.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = instruct_client.inpaint(image=image, prompt="make it winter", num_inference_steps=3, seed=4,
                                       image_guidance_scale=1.8).png
    assert (tmp_path / "out.png").read_bytes() == expected
    refused = subprocess.run(base + ["--pipeline", "tiny", "--out", str(tmp_path / "sd.png")], capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "mask_image: is required for task inpaint" in refused.stderr, refused.stderr
    assert not (tmp_path / "sd.png").exists()


@pytest.mark.browser
def test_the_editor_edits_a_whole_photo_by_instruction_and_offers_each_pipeline_its_tasks(instruct_server, browser,
                                                                                          tmp_path):
    from playwright.sync_api import expect

    from test_editor import _download, _open, _paint, _rgb, _run_to_result, _screenshot, offline_page
    from test_gateway import gateway

    photo = tmp_path / "photo.png"
    scene(256, 192, seed=3)[0].save(photo)
    with gateway(instruct_server.address.grpc, tmp_path / "gateway.log") as url, offline_page(browser, url) as page:
        _open(page, url, photo)
        offered = lambda: [option.get_attribute("value") for option in page.locator("#task option").all()  # noqa: E731
                           if option.get_attribute("hidden") is None]
        assert page.locator("#pipeline").input_value() == "instruct"
        assert offered() == ["instruct"] and page.locator("#task").input_value() == "instruct"
        expect(page.locator("#run")).to_be_enabled()  # nothing painted: the whole photo
        page.click("#more-settings summary")
        expect(page.locator("#param-image_guidance_scale")).to_be_visible()
        page.fill("#param-image_guidance_scale", "1.8")
        _run_to_result(page, prompt="make it winter", num_inference_steps=4, seed=12)
        _screenshot(page, "editor-instruct.png")
        _, edited = _download(page, tmp_path / "edited.png")
        # the SD pipeline: the inpainting tasks, no image guidance field, and a mask to paint first
        page.select_option("#pipeline", "tiny")
        assert offered() == ["inpaint", "remove", "replace_background"]
        expect(page.locator("#param-image_guidance_scale")).to_be_hidden()
        expect(page.locator("#run")).to_be_disabled()
        _paint(page, (0.2, 0.3), (0.6, 0.5))
        _run_to_result(page, prompt="a kite", num_inference_steps=3, seed=2)  # sent without image_guidance_scale
    original = _rgb(photo.read_bytes())
    assert (np.abs(_rgb(edited) - original).sum(axis=-1) > 0).mean() > 0.9  # a new photo, not a paste


def test_an_instruction_edit_resumes_from_its_checkpoints(instruct_client):
    image, _ = scene(64, 48, seed=4)
    assert_every_checkpoint_resumes(instruct_client, png_bytes(image), every=2, **dict(EDIT, guidance_scale=7.5))
