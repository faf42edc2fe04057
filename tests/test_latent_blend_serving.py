"""The second family through the real server: a text-to-image SD checkpoint (4-channel UNet) exported as
it is published (a ``StableDiffusionPipeline`` folder) and served by latent blending, against diffusers'
``StableDiffusionInpaintPipeline`` on the same 4-channel weights."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import scene, serving
from reference import diffusers_inpaint, psnr
from smartedit.edit.masks import shape_mask
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
