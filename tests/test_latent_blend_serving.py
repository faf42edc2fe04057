"""The second family through the real server: a text-to-image SD checkpoint (4-channel UNet) exported as
it is published (a ``StableDiffusionPipeline`` folder) and served by latent blending, against diffusers'
``StableDiffusionInpaintPipeline`` on the same 4-channel weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import png_bytes, scene, serving
from reference import diffusers_inpaint, psnr
from smartedit.edit.masks import shape_mask
from smartedit_client import InvalidRequestError
from test_resume_serving import assert_every_checkpoint_resumes
from test_serving import EDIT, _documented_region, _edited_in_place, _photo

pytestmark = pytest.mark.functional


@pytest.fixture(scope="module")
def blend_server(tiny_text_to_image_dir, tmp_path_factory):
    from smartedit.export.pipeline_loader import load_pipeline
    from smartedit.export.repository import build_repository

    out = tmp_path_factory.mktemp("blend") / "model_repository"
    build_repository(load_pipeline(tiny_text_to_image_dir), out, model_name="tiny text-to-image")
    with serving(out, out.parent / "tritonserver.log") as running:
        yield running


@pytest.fixture
def blend_client(blend_server):
    from smartedit_client import InpaintClient

    with InpaintClient(blend_server.address.grpc, timeout_s=120) as client:
        yield client


def test_the_server_says_which_family_serves_it(blend_client, tiny_text_to_image_dir):
    import json

    assert json.loads((tiny_text_to_image_dir / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusionPipeline")  # exported as text-to-image checkpoints are published
    info = blend_client.server_info()
    assert info.family == "sd-latent-blend" and info.model == "tiny text-to-image"


@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpmpp_2m"])
def test_a_whole_photo_edit_matches_diffusers(blend_client, tiny_text_to_image_pipeline, scheduler, strength):
    image, mask = scene(64, 48, seed=4)
    edit = dict(EDIT, strength=strength)
    served = np.asarray(blend_client.inpaint(image=image, mask_image=mask, scheduler=scheduler, **edit).image)
    reference = diffusers_inpaint(tiny_text_to_image_pipeline, image, mask, scheduler=scheduler, **edit)
    inside = np.asarray(mask) >= 128
    assert psnr(served[inside], reference[inside]) >= 40
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])  # outside the mask: as sent


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_a_crop_around_the_mask_matches_diffusers_on_that_crop(blend_client, tiny_text_to_image_pipeline, strength):
    pipeline = tiny_text_to_image_pipeline
    image, mask = _photo(2400, 1600, (1100, 700, 1220, 790))
    edit = dict(EDIT, strength=strength)
    result = blend_client.inpaint(image=image, mask_image=mask, scheduler="euler", crop_padding=32, **edit)
    served, original = np.asarray(result.image), np.asarray(image)
    inside = np.asarray(mask) >= 128
    assert result.image.size == image.size and np.array_equal(served[~inside], original[~inside])
    factor = pipeline.vae_scale_factor
    box, (width, height) = _documented_region(inside, 32, pipeline.unet.config.sample_size * factor, factor)
    crop = [part.crop(box).resize((width, height), resample=Image.LANCZOS) for part in (image, mask)]
    reference = _edited_in_place(diffusers_inpaint(pipeline, *crop, scheduler="euler", **edit), original, inside, box)
    assert psnr(served[inside], reference[inside]) >= 40


def test_remove_and_replace_background_work_on_it(blend_client):
    image, mask = scene(64, 48, seed=10)
    original, subject = np.asarray(image), np.asarray(mask) >= 128
    removed = blend_client.inpaint(image=image, mask_image=mask, task="remove", prompt="", num_inference_steps=4,
                                   seed=5)
    grown = shape_mask(subject, invert=False, grow_by=8 + 8)  # the task's mask_grow, and its feather beyond
    served = np.asarray(removed.image)
    assert removed.parameters["parameters"]["task"] == "remove"
    assert np.array_equal(served[~grown], original[~grown]) and not np.array_equal(served[subject], original[subject])
    replaced = blend_client.inpaint(image=image, mask_image=mask, task="replace_background", prompt="a beach",
                                    num_inference_steps=4, seed=3)
    eroded = shape_mask(subject, invert=False, grow_by=-8)  # the subject, inside the default feather
    served = np.asarray(replaced.image)
    assert np.array_equal(served[eroded], original[eroded])  # the subject kept byte-exact
    assert (np.abs(served.astype(int) - original.astype(int)).sum(axis=-1) > 0)[~subject].mean() > 0.9


# ---------------------------------------------------------------- text edits by inversion (task text_edit)

TEXT_EDIT = dict(task="text_edit", prompt="a red chair", source_prompt="a photo of a room", negative_prompt="ugly",
                 num_inference_steps=5, guidance_scale=7.5, strength=1.0, seed=1234)


def _latent_mask(mask: Image.Image, factor: int):
    """The mask at the latents' size as diffusers' inpainting pipelines make it (binarized at 0.5, then
    ``interpolate``'s nearest): what DiffEdit is given."""
    import torch

    binary = torch.from_numpy((np.asarray(mask) >= 128).astype(np.float32))[None, None]
    return torch.nn.functional.interpolate(binary, size=(mask.size[1] // factor, mask.size[0] // factor))


def test_the_server_lists_text_edits_and_the_source_prompt_for_this_family_only(blend_client, client):
    info = blend_client.server_info()
    assert info.tasks == ("inpaint", "remove", "replace_background", "text_edit")
    assert info.parameters["source_prompt"].default == ""
    inpainting = client.server_info()  # the 9-channel inpainting model: no inversion
    assert "text_edit" not in inpainting.tasks and "source_prompt" not in inpainting.parameters


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_a_text_edit_of_the_whole_photo_matches_diffedit(blend_client, tiny_text_to_image_pipeline, strength):
    from reference import diffusers_text_edit

    image, _ = scene(64, 48, seed=4)
    edit = dict(TEXT_EDIT, strength=strength)
    served = blend_client.inpaint(image=image, **edit)  # no mask: the whole photo
    assert served.parameters["parameters"]["source_prompt"] == "a photo of a room"
    reference = diffusers_text_edit(tiny_text_to_image_pipeline, image, None,
                                    **{k: v for k, v in edit.items() if k != "task"})
    assert psnr(np.asarray(served.image), reference) >= 40
    # inverted under another source prompt, diffusers' edit is another: the parity above can fail
    other = diffusers_text_edit(tiny_text_to_image_pipeline, image, None,
                                **{k: v for k, v in edit.items() if k != "task"} | dict(source_prompt=""))
    assert psnr(np.asarray(served.image), other) < 40


def test_a_full_text_edit_is_the_text_to_image_pipeline_run_from_the_inverted_latents(blend_client,
                                                                                      tiny_text_to_image_pipeline):
    """Strength 1: DDIM inversion all the way, then diffusers' own ``StableDiffusionPipeline`` given those latents."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from reference import diffusers_inversion

    pipeline = tiny_text_to_image_pipeline
    text_to_image = StableDiffusionPipeline.from_pipe(pipeline,
                                                      scheduler=DDIMScheduler.from_config(pipeline.scheduler.config))
    text_to_image.set_progress_bar_config(disable=True)
    image, _ = scene(64, 48, seed=5)
    served = np.asarray(blend_client.inpaint(image=image, **TEXT_EDIT).image)
    inverted = diffusers_inversion(pipeline, image, source_prompt=TEXT_EDIT["source_prompt"], num_inference_steps=5,
                                   strength=1.0, generator=torch.Generator().manual_seed(TEXT_EDIT["seed"]))
    reference = text_to_image(prompt="a red chair", negative_prompt="ugly", latents=inverted[:, 0], height=48,
                              width=64, num_inference_steps=5, guidance_scale=7.5, output_type="np").images[0]
    assert psnr(served, np.round(reference * 255).astype(np.uint8)) >= 40


def test_a_masked_text_edit_matches_diffedit_inside_and_keeps_every_pixel_outside(blend_client,
                                                                                  tiny_text_to_image_pipeline):
    from reference import diffusers_text_edit

    image, mask = scene(64, 48, seed=6)
    edit = dict(TEXT_EDIT, strength=0.8)
    served = np.asarray(blend_client.inpaint(image=image, mask_image=mask, **edit).image)
    factor = tiny_text_to_image_pipeline.vae_scale_factor
    reference = diffusers_text_edit(tiny_text_to_image_pipeline, image, _latent_mask(mask, factor),
                                    **{k: v for k, v in edit.items() if k != "task"})
    inside = np.asarray(mask) >= 128
    assert psnr(served[inside], reference[inside]) >= 40
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])


def test_inverting_and_denoising_under_the_same_prompt_reconstructs_the_photo(blend_client,
                                                                             tiny_text_to_image_pipeline):
    """Reconstruction: target = source prompt, no guidance. Served as diffusers reconstructs (>= 40 dB), its PSNR
    against the photo reported: on the tiny model's random weights it is poor (~9 dB, as poor as its VAE's own round
    trip); ``test_denoise`` checks that the inversion's arithmetic reconstructs exactly where DDIM inversion can."""
    from reference import diffusers_text_edit

    image, _ = scene(64, 48, seed=7)
    edit = dict(TEXT_EDIT, prompt="a photo of a room", guidance_scale=1.0, num_inference_steps=10)
    served = np.asarray(blend_client.inpaint(image=image, **edit).image)
    reference = diffusers_text_edit(tiny_text_to_image_pipeline, image, None,
                                    **{k: v for k, v in edit.items() if k != "task"})
    assert psnr(served, reference) >= 40
    print(f"reconstruction PSNR against the photo: {psnr(served, np.asarray(image)):.1f} dB")


def test_a_masked_text_edit_of_a_large_photo_keeps_the_rest_and_replays(blend_client):
    image, mask = _photo(2400, 1600, (1100, 700, 1220, 790))
    result = blend_client.inpaint(image=image, mask_image=mask, **dict(TEXT_EDIT, num_inference_steps=3))
    served, inside = np.asarray(result.image), np.asarray(mask) >= 128
    assert result.image.size == image.size and np.array_equal(served[~inside], np.asarray(image)[~inside])
    assert not np.array_equal(served[inside], np.asarray(image)[inside])
    assert blend_client.replay(result.png, image=image, mask_image=mask).png == result.png


# (task, size, masked, steps, strength, guidance_scale): text edits whose inversion ends at different steps, with one
# row (no guidance) and two, beside latent-blending inpaints, all through the same UNet calls.
TEXT_EDITS_BATCHED = [
    ("text_edit", (64, 48), False, 4, 1.0, 7.5),
    ("text_edit", (64, 48), True, 5, 0.6, 5.0),
    ("text_edit", (64, 48), False, 6, 0.5, 1.0),
    ("text_edit", (48, 64), True, 3, 1.0, 1.0),
    ("inpaint", (64, 48), True, 4, 1.0, 7.5),
    ("inpaint", (64, 48), True, 5, 0.6, 1.0),
]


def _text_edit_batched(client, task, size, masked, steps, strength, guidance_scale) -> bytes:
    image, mask = scene(*size, seed=steps)
    source = dict(source_prompt="a room") if task == "text_edit" else {}
    return client.inpaint(image=image, mask_image=mask if masked else None, prompt="a lamp", task=task,
                          num_inference_steps=steps, strength=strength, guidance_scale=guidance_scale, seed=steps,
                          **source).png


def test_text_edits_sent_together_equal_the_same_edits_sent_alone(blend_client):
    from conftest import assert_together_equals_alone

    assert_together_equals_alone(TEXT_EDITS_BATCHED, lambda *edit: _text_edit_batched(blend_client, *edit))


def test_streaming_a_text_edit_counts_its_inversion_steps_and_ends_with_the_unary_bytes(blend_client):
    from smartedit_client import InpaintResult, PreviewEvent, ProgressEvent

    image, _ = scene(64, 48, seed=2)
    edit = dict(TEXT_EDIT, strength=0.6)  # 3 inversion steps, then 3 denoising steps
    with blend_client.inpaint_stream(image=image, preview_every=2, **edit) as stream:
        events = list(stream)
    progress = [(event.step, event.total_steps) for event in events if isinstance(event, ProgressEvent)]
    assert progress == [(step, 6) for step in range(1, 7)]
    assert any(isinstance(event, PreviewEvent) for event in events)
    assert isinstance(events[-1], InpaintResult) and events[-1].png == blend_client.inpaint(image=image, **edit).png


@pytest.mark.parametrize("options, message", [
    (dict(scheduler="euler"), "scheduler: euler is not taken by task text_edit"),
    (dict(task="inpaint"), "source_prompt: is taken by task text_edit only"),
    (dict(source_prompt="x" * 5000), "source_prompt: is 5000 bytes; the limit is"),
    (dict(num_inference_steps=300), "num_inference_steps: 300 x strength 1 = 300 denoising steps (and as many "
                                    "inversion steps)"),
])
def test_bad_text_edits_are_refused_naming_the_field(blend_client, options, message):
    from smartedit_client import InvalidRequestError

    image, mask = scene(256, 256)  # the working size: 500 steps' budget, which 300 steps inverted and denoised pass
    with pytest.raises(InvalidRequestError) as caught:
        blend_client.inpaint(image=image, mask_image=mask, **{**TEXT_EDIT, **options})
    assert str(caught.value).startswith(message), str(caught.value)
    assert blend_client.inpaint(image=image, **dict(TEXT_EDIT, num_inference_steps=2)).image.size == image.size


def test_the_inpainting_model_refuses_text_edits_by_name(client):
    from smartedit_client import InvalidRequestError

    image, mask = scene(64, 48)
    for options, message in [
        (dict(task="text_edit"), "task: text_edit is not served by this pipeline (family sd-inpaint); its tasks: "
                                 "inpaint, remove, replace_background"),
        (dict(source_prompt="a room"), "source_prompt: is not taken by this pipeline (family sd-inpaint)"),
    ]:
        with pytest.raises(InvalidRequestError) as caught:
            client.inpaint(image=image, mask_image=mask, prompt="x", num_inference_steps=2, **options)
        assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.browser
def test_the_editor_edits_a_whole_photo_by_text_and_sends_the_source_prompt_with_that_task_only(blend_server,
                                                                                                blend_client, browser,
                                                                                                tmp_path):
    from playwright.sync_api import expect

    from test_editor import _download, _open, _paint, _run_to_result, _screenshot, offline_page
    from test_gateway import gateway

    photo = tmp_path / "photo.png"
    scene(256, 192, seed=3)[0].save(photo)
    with gateway(blend_server.address.grpc, tmp_path / "gateway.log") as url, offline_page(browser, url) as page:
        _open(page, url, photo)
        offered = [option.get_attribute("value") for option in page.locator("#task option").all()
                   if option.get_attribute("hidden") is None]
        assert offered == ["inpaint", "remove", "replace_background", "text_edit"]
        expect(page.locator("#param-source_prompt")).to_be_hidden()  # inpaint's form: no source prompt
        page.select_option("#task", "text_edit")
        expect(page.locator("#param-source_prompt")).to_be_visible()  # shown, its section opened
        expect(page.locator("#run")).to_be_enabled()  # nothing painted: the whole photo
        page.fill("#param-source_prompt", "a photo of shapes")
        _run_to_result(page, prompt="a photo of shapes at night", num_inference_steps=4, seed=12)
        _screenshot(page, "editor-text-edit.png")
        _, edited = _download(page, tmp_path / "edited.png")
        # an inpaint after it: the source prompt still filled in, hidden and not sent (the server would refuse it)
        page.select_option("#task", "inpaint")
        expect(page.locator("#param-source_prompt")).to_be_hidden()
        _paint(page, (0.2, 0.3), (0.6, 0.5))
        _run_to_result(page, prompt="a kite", num_inference_steps=3, seed=2)
    result = blend_client.replay(edited, image=photo.read_bytes())
    assert result.parameters["parameters"]["task"] == "text_edit"
    assert result.parameters["parameters"]["source_prompt"] == "a photo of shapes" and result.png == edited


def test_smartedit_eval_measures_a_folders_edits_against_the_server(blend_server, blend_client, tiny_model_dir,
                                                                    tmp_path):
    """`smartedit eval` as the README runs it: byte-exact outside every mask (feathered too: inf and 1), a text
    edit's reconstruction as measured here by hand, a CLIP score for each."""
    import json
    import subprocess
    import sys

    from conftest import png_bytes
    from smartedit.evaluation.metrics import psnr as eval_psnr
    from test_evaluation import write_tiny_clip

    image, mask = scene(64, 48, seed=6)
    (tmp_path / "photo.png").write_bytes(png_bytes(image))
    (tmp_path / "mask.png").write_bytes(png_bytes(mask))
    text_edit = dict(task="text_edit", source_prompt="a room", prompt="a room at dusk", num_inference_steps=4, seed=5)
    (tmp_path / "edits.json").write_text(json.dumps([
        dict(image="photo.png", mask="mask.png", prompt="a lamp", num_inference_steps=3, seed=2),
        dict(text_edit, image="photo.png", name="whole photo"),
        dict(text_edit, image="photo.png", mask="mask.png", mask_blur=4),
    ]))
    clip = write_tiny_clip(tmp_path / "clip", tiny_model_dir / "tokenizer")
    done = subprocess.run([sys.executable, "-m", "smartedit", "eval", str(tmp_path), "--url",
                           blend_server.address.grpc, "--clip", str(clip), "--out", str(tmp_path / "report.md")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "report.md").read_text() == done.stdout
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in done.stdout.splitlines()[2:]]
    masked, whole, masked_text, means = rows
    assert masked[:5] == ["1: photo.png", "inpaint", "a lamp", "∞", "1.0000"] and masked[5:7] == ["—", "—"]
    assert masked_text[3:5] == ["∞", "1.0000"] and whole[:5] == ["whole photo", "text_edit", "a room at dusk", "—", "—"]
    rebuilt = blend_client.inpaint(image=image, **dict(text_edit, prompt="a room", guidance_scale=1.0)).image
    assert float(whole[5]) == pytest.approx(eval_psnr(np.asarray(image), np.asarray(rebuilt)), abs=0.01)
    assert all(0.0 <= float(row[7]) <= 100.0 for row in (masked, whole, masked_text))
    assert means[0] == "mean of 3"
    # a wrong edits file: refused before any edit, naming the entry and key
    (tmp_path / "edits.json").write_text(json.dumps([dict(image="photo.png", prompt="x", seeed=1)]))
    refused = subprocess.run([sys.executable, "-m", "smartedit", "eval", str(tmp_path), "--url",
                              blend_server.address.grpc], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "edit 0: unknown key 'seeed'" in refused.stderr


@pytest.mark.parametrize("scheduler", ["euler_ancestral", "dpmpp_2m"])
def test_an_edit_on_a_4_channel_model_resumes_from_its_checkpoints(blend_client, scheduler):
    # strength < 1: the kept photo latents and their noise come from the generator at the start, the
    # ancestral sampler draws from it at every step; both must come back as they were.
    image, mask = scene(64, 48, seed=4)
    assert_every_checkpoint_resumes(blend_client, png_bytes(image), png_bytes(mask), every=2,
                                    **dict(EDIT, strength=0.8, scheduler=scheduler))


def test_a_text_edit_is_refused_checkpoints_by_name(blend_client):
    image, _ = scene(64, 48, seed=4)
    with pytest.raises(InvalidRequestError, match="checkpoint_every: 2: a text edit cannot be checkpointed"):
        list(blend_client.inpaint_stream(image=png_bytes(image), task="text_edit", prompt="a cat", checkpoint_every=2))
