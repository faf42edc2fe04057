"""The SDXL families through the real server: the tiny SDXL inpainting model (9-channel UNet, pipeline
``sdxl``, the first) and a tiny SDXL base (4-channel, served by latent blending, ``sdxl_base``) exported into
one repository, against diffusers' ``StableDiffusionXLInpaintPipeline`` on the same weights."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import assert_together_equals_alone, png_bytes, scene, serving
from reference import diffusers_inpaint, psnr
from smartedit.edit.masks import shape_mask
from test_resume_serving import assert_every_checkpoint_resumes
from test_serving import _documented_region, _edited_in_place, _photo

pytestmark = pytest.mark.functional

EDIT = dict(prompt="a red chair", num_inference_steps=5, guidance_scale=7.5, seed=1234)


@pytest.fixture(scope="module")
def sdxl_server(tiny_sdxl_pipeline, tiny_sdxl_base_pipeline, tmp_path_factory):
    from smartedit.export.repository import PipelineSource, build_pipelines_repository

    out = tmp_path_factory.mktemp("sdxl") / "model_repository"
    build_pipelines_repository([PipelineSource("sdxl", tiny_sdxl_pipeline, "tiny SDXL inpainting"),
                                PipelineSource("sdxl_base", tiny_sdxl_base_pipeline, "tiny SDXL base")], out)
    with serving(out, out.parent / "tritonserver.log") as running:
        yield running


@pytest.fixture
def sdxl_client(sdxl_server):
    from smartedit_client import InpaintClient

    with InpaintClient(sdxl_server.address.grpc, timeout_s=120) as client:
        yield client


def _served_and_reference(client, pipeline, name, image, mask, *, negative_prompt, **edit):
    """The served edit (an empty negative prompt stands for none) and diffusers' on the same photo."""
    served = client.inpaint(image=image, mask_image=mask, pipeline=name, negative_prompt=negative_prompt or "",
                            **edit)
    reference = diffusers_inpaint(pipeline, image, mask, negative_prompt=negative_prompt, **edit)
    return np.asarray(served.image), reference


def test_the_server_says_which_family_serves_each_pipeline_and_its_defaults(sdxl_client):
    info = sdxl_client.server_info()
    assert list(info.pipelines) == ["sdxl", "sdxl_base"]
    assert (info.family, info.model) == ("sdxl-inpaint", "tiny SDXL inpainting")
    assert info.parameters["strength"].default == 0.9999  # diffusers' SDXL inpainting default, not SD's 1.0
    base = sdxl_client.server_info(pipeline="sdxl_base")
    assert (base.family, base.parameters["strength"].default) == ("sdxl-latent-blend", 0.9999)


@pytest.mark.parametrize("negative_prompt", ["blurry, ugly", None], ids=["negative", "force-zeros"])
@pytest.mark.parametrize("strength", [0.99, 0.7])
@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
def test_a_whole_photo_edit_matches_diffusers(sdxl_client, tiny_sdxl_pipeline, scheduler, strength, negative_prompt):
    image, mask = scene(64, 48, seed=4)
    served, reference = _served_and_reference(sdxl_client, tiny_sdxl_pipeline, "sdxl", image, mask,
                                               negative_prompt=negative_prompt, scheduler=scheduler,
                                               strength=strength, **EDIT)
    inside = np.asarray(mask) >= 128
    assert psnr(served[inside], reference[inside]) >= 40
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])  # outside the mask: as sent


def test_no_negative_prompt_is_zeros_not_an_encoded_empty_prompt(sdxl_client, tiny_sdxl_pipeline):
    """diffusers' own results for negative_prompt=None (zeros) and "" (encoded) differ past the parity
    margin on these weights, so the force-zeros parity above could tell them apart; the served edit with
    no negative prompt is None's."""
    image, mask = scene(64, 48, seed=4)
    edit = dict(EDIT, scheduler="euler", strength=0.99)
    served = np.asarray(sdxl_client.inpaint(image=image, mask_image=mask, pipeline="sdxl", negative_prompt="",
                                            **edit).image)
    zeros = diffusers_inpaint(tiny_sdxl_pipeline, image, mask, negative_prompt=None, **edit)
    encoded = diffusers_inpaint(tiny_sdxl_pipeline, image, mask, negative_prompt="", **edit)
    inside = np.asarray(mask) >= 128
    assert psnr(served[inside], zeros[inside]) >= 40 > psnr(served[inside], encoded[inside])


def test_the_default_strength_is_diffusers_sdxl_default(sdxl_client, tiny_sdxl_pipeline):
    image, mask = scene(48, 64, seed=7)
    served = sdxl_client.inpaint(image=image, mask_image=mask, pipeline="sdxl", scheduler="euler", **EDIT)
    assert served.parameters["parameters"]["strength"] == pytest.approx(0.9999)
    reference = tiny_sdxl_pipeline.from_pipe(tiny_sdxl_pipeline)  # euler is the tiny model's own sampler
    from diffusers import EulerDiscreteScheduler
    import torch

    reference.scheduler = EulerDiscreteScheduler.from_config(tiny_sdxl_pipeline.scheduler.config)
    expected = np.asarray(reference(image=image, mask_image=mask, height=64, width=48,
                                    generator=torch.Generator().manual_seed(EDIT["seed"]),
                                    **{k: v for k, v in EDIT.items() if k != "seed"}).images[0])
    inside = np.asarray(mask) >= 128
    assert psnr(np.asarray(served.image)[inside], expected[inside]) >= 40


@pytest.mark.parametrize("negative_prompt", ["blurry", None], ids=["negative", "force-zeros"])
def test_a_crop_around_the_mask_matches_diffusers_on_that_crop(sdxl_client, tiny_sdxl_pipeline, negative_prompt):
    """The crop's own size ids: diffusers is given the crop at its working size, and makes the ids of it."""
    pipeline = tiny_sdxl_pipeline
    image, mask = _photo(2400, 1600, (1100, 700, 1220, 790))
    result = sdxl_client.inpaint(image=image, mask_image=mask, pipeline="sdxl", scheduler="euler", crop_padding=32,
                                 negative_prompt=negative_prompt or "", strength=0.99, **EDIT)
    served, original = np.asarray(result.image), np.asarray(image)
    inside = np.asarray(mask) >= 128
    assert result.image.size == image.size and np.array_equal(served[~inside], original[~inside])
    factor = pipeline.vae_scale_factor
    box, (width, height) = _documented_region(inside, 32, pipeline.unet.config.sample_size * factor, factor)
    assert (width, height) != image.size  # a crop, at a size of its own
    crop = [part.crop(box).resize((width, height), resample=Image.LANCZOS) for part in (image, mask)]
    generated = diffusers_inpaint(pipeline, *crop, scheduler="euler", negative_prompt=negative_prompt, strength=0.99,
                                  **EDIT)
    reference = _edited_in_place(generated, original, inside, box)
    assert psnr(served[inside], reference[inside]) >= 40


@pytest.mark.parametrize("scheduler, strength", [("euler", 0.99), ("ddim", 0.7)])
def test_a_4_channel_sdxl_checkpoint_is_served_by_latent_blending_as_diffusers_does(sdxl_client,
                                                                                  tiny_sdxl_base_pipeline,
                                                                                  scheduler, strength):
    image, mask = scene(64, 48, seed=9)
    served, reference = _served_and_reference(sdxl_client, tiny_sdxl_base_pipeline, "sdxl_base", image, mask,
                                               negative_prompt=None, scheduler=scheduler, strength=strength, **EDIT)
    inside = np.asarray(mask) >= 128
    assert psnr(served[inside], reference[inside]) >= 40
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])


@pytest.mark.parametrize("masked, strength, guidance_scale", [(False, 1.0, 5.0), (True, 0.6, 5.0), (False, 0.8, 1.0)])
def test_a_text_edit_on_a_4_channel_sdxl_checkpoint_matches_diffusers_pieces(sdxl_client, tiny_sdxl_base_pipeline,
                                                                           masked, strength, guidance_scale):
    """Task text_edit on SDXL base: DDIM inversion under the source prompt (with SDXL's pooled embeddings and size
    ids), then DDIM under the prompt, the inversion's trajectory kept outside a mask; no negative prompt: zeros."""
    from reference import diffusers_sdxl_text_edit
    from test_latent_blend_serving import _latent_mask

    image, mask = scene(64, 48, seed=11)
    edit = dict(prompt="a red chair", source_prompt="a photo of a room", num_inference_steps=5, strength=strength,
                guidance_scale=guidance_scale, seed=3)
    served = np.asarray(sdxl_client.inpaint(image=image, mask_image=mask if masked else None, task="text_edit",
                                            pipeline="sdxl_base", **edit).image)
    latent_mask = _latent_mask(mask, tiny_sdxl_base_pipeline.vae_scale_factor) if masked else None
    reference = diffusers_sdxl_text_edit(tiny_sdxl_base_pipeline, image, latent_mask, negative_prompt=None, **edit)
    inside = np.asarray(mask) >= 128 if masked else np.ones(served.shape[:2], dtype=bool)
    assert psnr(served[inside], reference[inside]) >= 40
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])
    other = diffusers_sdxl_text_edit(tiny_sdxl_base_pipeline, image, latent_mask, negative_prompt=None,
                                     **dict(edit, source_prompt="a dog"))
    assert psnr(served[inside], other[inside]) < 40  # the source prompt counts: the parity can fail


def test_the_sdxl_inpainting_model_refuses_text_edits_and_the_base_lists_them(sdxl_client):
    from smartedit_client import InvalidRequestError

    assert "text_edit" in sdxl_client.server_info(pipeline="sdxl_base").tasks
    assert "text_edit" not in sdxl_client.server_info(pipeline="sdxl").tasks
    image, _ = scene(64, 48)
    with pytest.raises(InvalidRequestError, match="task: text_edit is not served by this pipeline"):
        sdxl_client.inpaint(image=image, prompt="x", task="text_edit", pipeline="sdxl", num_inference_steps=2)


# (pipeline, width, height, sampler, steps, seed): sizes, samplers, step counts and both SDXL families mixed.
# Text edits (sampler "text_edit": ddim, inverted first) of the 4-channel model among them.
BATCHED_EDITS = [("sdxl", 64, 48, "euler", 4, 1), ("sdxl", 48, 64, "ddim", 6, 2), ("sdxl", 64, 64, "dpmpp_2m", 5, 3),
                 ("sdxl_base", 64, 48, "euler", 5, 4), ("sdxl", 80, 48, "euler_ancestral", 3, 5),
                 ("sdxl_base", 48, 48, "ddim", 4, 6), ("sdxl_base", 64, 48, "text_edit", 4, 7),
                 ("sdxl_base", 48, 64, "text_edit", 3, 8)]


def _batched_edit(client, pipeline, width, height, sampler, steps, seed) -> bytes:
    image, mask = scene(width, height, seed=seed)
    task = dict(task="text_edit", source_prompt="a room", scheduler="ddim") if sampler == "text_edit" else dict(
        scheduler=sampler)
    return client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), pipeline=pipeline, prompt=f"edit {seed}",
                          num_inference_steps=steps, seed=seed, **task).png


def test_sdxl_edits_sent_together_equal_the_same_edits_sent_alone(sdxl_client):
    assert_together_equals_alone(BATCHED_EDITS, lambda *edit: _batched_edit(sdxl_client, *edit))


def test_remove_replace_background_and_variations_work_on_sdxl(sdxl_client):
    image, mask = scene(64, 48, seed=10)
    original, subject = np.asarray(image), np.asarray(mask) >= 128
    removed = sdxl_client.inpaint(image=image, mask_image=mask, pipeline="sdxl", task="remove", prompt="",
                                  num_inference_steps=4, seed=5)
    grown = shape_mask(subject, invert=False, grow_by=8 + 8)  # the task's mask_grow, and its feather beyond
    served = np.asarray(removed.image)
    assert removed.parameters["parameters"]["task"] == "remove"
    assert np.array_equal(served[~grown], original[~grown]) and not np.array_equal(served[subject], original[subject])
    replaced = sdxl_client.inpaint(image=image, mask_image=mask, pipeline="sdxl", task="replace_background",
                                   prompt="a beach", num_inference_steps=4, seed=3)
    eroded = shape_mask(subject, invert=False, grow_by=-8)  # the subject, inside the default feather
    served = np.asarray(replaced.image)
    assert np.array_equal(served[eroded], original[eroded])  # the subject kept byte-exact
    assert (np.abs(served.astype(int) - original.astype(int)).sum(axis=-1) > 0)[~subject].mean() > 0.9
    variations = sdxl_client.inpaint(image=image, mask_image=mask, pipeline="sdxl", num_images=2, **EDIT)
    assert len({edited.png for edited in variations.images}) == 2
    second = variations.images[1]
    assert second.png == sdxl_client.inpaint(image=image, mask_image=mask, pipeline="sdxl",
                                             **dict(EDIT, seed=second.seed_used)).png


def test_streaming_previews_and_replay_work_on_sdxl(sdxl_client, sdxl_server, tmp_path):
    from smartedit_client import PreviewEvent

    image, mask = scene(64, 64, seed=11)
    with sdxl_client.inpaint_stream(image=image, mask_image=mask, pipeline="sdxl", preview_every=2,
                                    **EDIT) as stream:
        events = list(stream)
    previews = [event for event in events if isinstance(event, PreviewEvent)]
    # At the default strength 0.9999, 5 steps run int(5 x 0.9999) = 4, as in diffusers.
    assert [(event.step, event.total_steps) for event in previews] == [(2, 4), (4, 4)]
    assert all(event.image.size == (8, 8) for event in previews)  # the latents' size: 64 px / 8
    unary = sdxl_client.inpaint(image=image, mask_image=mask, pipeline="sdxl", **EDIT)
    assert stream.result.png == unary.png
    assert unary.parameters["model"] == "tiny SDXL inpainting"
    assert sdxl_client.replay(unary.png, image=image, mask_image=mask).png == unary.png
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    (tmp_path / "mask.png").write_bytes(png_bytes(mask))
    (tmp_path / "edit.png").write_bytes(unary.png)
    replayed = subprocess.run([sys.executable, "-m", "smartedit_client.cli", "--url", sdxl_server.address.grpc,
                               "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                               "--replay", str(tmp_path / "edit.png"), "--out", str(tmp_path / "again.png")],
                              capture_output=True, text=True, timeout=120)
    assert replayed.returncode == 0, replayed.stderr
    assert (tmp_path / "again.png").read_bytes() == unary.png


def test_the_gateway_serves_sdxl_edits_and_describes_the_pipeline(sdxl_server, sdxl_client, tmp_path):
    import base64
    import json
    import urllib.request

    from test_gateway import _post_json, gateway

    image, mask = scene(64, 48, seed=6)
    body = {"image": base64.b64encode(png_bytes(image)).decode(),
            "mask_image": base64.b64encode(png_bytes(mask)).decode(), "prompt": "g", "seed": 8,
            "num_inference_steps": 4}
    expected = {name: sdxl_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="g", seed=8,
                                          num_inference_steps=4, pipeline=name).png for name in ("sdxl", "sdxl_base")}
    with gateway(sdxl_server.address.grpc, tmp_path / "gateway.log") as url:
        for name, png in expected.items():
            status, _, answer = _post_json(url + "/edit/inpaint", dict(body, pipeline=name))
            assert status == 200 and answer == png, answer[:200]
        with urllib.request.urlopen(url + "/info?pipeline=sdxl", timeout=30) as response:
            info = json.load(response)
    assert (info["pipeline"], info["family"]) == ("sdxl", "sdxl-inpaint")
    assert info["parameters"]["strength"]["default"] == 0.9999


@pytest.mark.browser
def test_the_editor_runs_an_sdxl_edit_with_its_defaults(sdxl_server, browser, tmp_path):
    from playwright.sync_api import expect

    from test_editor import _download, _open, _paint, _record_progress, _rgb, _run_to_result, _screenshot, \
        _sent_mask, offline_page
    from test_gateway import gateway

    photo = tmp_path / "photo.png"
    scene(256, 192, seed=3)[0].save(photo)
    with gateway(sdxl_server.address.grpc, tmp_path / "gateway.log") as url, offline_page(browser, url) as page:
        _open(page, url, photo)
        assert page.locator("#pipeline option").all_inner_texts() == ["sdxl (sdxl-inpaint)",
                                                                      "sdxl_base (sdxl-latent-blend)"]
        assert "tiny SDXL inpainting" in page.inner_text("#server")
        _paint(page, (0.2, 0.3), (0.6, 0.5))
        _record_progress(page)
        _run_to_result(page, prompt="a kite", num_inference_steps=5, seed=12, preview_every=1)
        # SDXL's default strength, as the server applies it: int(5 x 0.9999) = 4 steps run.
        assert "step 4 of 4 — strength 0.9999 of 5 steps" in page.evaluate("window.progressSeen")
        expect(page.locator("#history li")).to_have_count(1)
        _screenshot(page, "editor-sdxl.png")
        mask = _sent_mask(page)
        _, edited = _download(page, tmp_path / "edited.png")
    original = _rgb(photo.read_bytes())
    assert mask.any() and np.array_equal(_rgb(edited)[~mask], original[~mask])
    assert not np.array_equal(_rgb(edited)[mask], original[mask])


@pytest.mark.parametrize("pipeline", [None, "sdxl_base"])
def test_an_sdxl_edit_resumes_from_its_checkpoints(sdxl_client, pipeline):
    image, mask = scene(64, 48, seed=9)
    assert_every_checkpoint_resumes(sdxl_client, png_bytes(image), png_bytes(mask), every=2, pipeline=pipeline,
                                    **dict(EDIT, scheduler="unipc"))
