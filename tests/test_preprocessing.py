"""Request validation: every rejection names the field and the value."""

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import exif_sideways, png_bytes, scene
from smartedit.errors import RequestError
from smartedit.postprocessing import compose, encode_png
from smartedit.preprocessing import prepare_images, processing_size, resolve_parameters
from smartedit.settings import PreprocessSettings
from smartedit.spec import PipelineInfo

INFO = PipelineInfo(vae_scale_factor=8, latent_channels=4, unet_in_channels=9, text_length=77,
                    text_hidden_size=32, vae_scaling_factor=0.18215, unet_sample_size=64)
SETTINGS = PreprocessSettings()


def _params(**overrides):
    values = dict(prompt=b"a cat", negative_prompt=None, num_inference_steps=None, guidance_scale=None,
                  strength=None, seed=None, scheduler=None, settings=SETTINGS)
    values.update(overrides)
    return resolve_parameters(**values)


def test_defaults_are_applied_and_a_seed_is_drawn():
    params = _params()
    assert (params.num_inference_steps, params.guidance_scale, params.strength, params.scheduler) == (50, 7.5, 1.0, "ddim")
    assert params.negative_prompt == "" and 0 <= params.seed < 2**63
    assert _params().seed != params.seed


@pytest.mark.parametrize("overrides,field,fragment", [
    (dict(num_inference_steps=0), "num_inference_steps", "got 0"),
    (dict(num_inference_steps=-3), "num_inference_steps", "got -3"),
    (dict(guidance_scale=math.nan), "guidance_scale", "got nan"),
    (dict(guidance_scale=math.inf), "guidance_scale", "got inf"),
    (dict(strength=0.0), "strength", "got 0.0"),
    (dict(strength=1.5), "strength", "got 1.5"),
    (dict(strength=0.01, num_inference_steps=10), "strength", "leaves no step"),
    (dict(scheduler=b"warp"), "scheduler", "'warp'"),
    (dict(prompt=b"\xff\xfe"), "prompt", "UTF-8"),
    (dict(prompt=b"a" * 4097), "prompt", "is 4097 bytes; the limit is 4096"),
    (dict(negative_prompt=b"n" * 5000), "negative_prompt", "is 5000 bytes; the limit is 4096"),
])
def test_bad_parameters_name_the_field_and_value(overrides, field, fragment):
    with pytest.raises(RequestError) as caught:
        _params(**overrides)
    assert caught.value.field == field
    assert str(caught.value).startswith(field + ":") and fragment in str(caught.value)


def test_bad_images():
    image, mask = scene(64, 48)
    good, good_mask = png_bytes(image), png_bytes(mask)
    cases = [
        (b"not an image", good_mask, "image", "is not a PNG, JPEG or WebP image"),
        (good[: len(good) // 2], good_mask, "image", "could not be decoded"),
        (good, png_bytes(Image.new("L", (64, 40))), "mask_image", "is 64x40 but image is 64x48"),
        (good, b"", "mask_image", "is empty"),
    ]
    for image_bytes, mask_bytes, field, fragment in cases:
        with pytest.raises(RequestError) as caught:
            prepare_images(image_bytes, mask_bytes, INFO, SETTINGS)
        assert caught.value.field == field and fragment in str(caught.value), str(caught.value)


def test_oversized_image_is_rejected_from_its_header():
    big = Image.new("RGB", (3000, 2000))
    with pytest.raises(RequestError, match=r"image: is 3000x2000 = 6000000 pixels; the limit is"):
        prepare_images(png_bytes(big), png_bytes(big.convert("L")), INFO, SETTINGS)


def test_sizes_off_the_grid_are_processed_at_a_multiple_and_returned_whole():
    assert processing_size(70, 53, INFO) == (64, 48)
    image, mask = scene(70, 53)
    prepared = prepare_images(png_bytes(image), png_bytes(mask), INFO, SETTINGS)
    assert prepared.init_image.shape == (1, 3, 48, 64)
    assert prepared.latent_mask.shape == (1, 1, 6, 8)
    assert prepared.original_image.shape == (53, 70, 3)


def test_mask_threshold_is_128():
    mask = Image.fromarray(np.array([[127, 128] * 4] * 8, dtype=np.uint8))
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    prepared = prepare_images(png_bytes(image), png_bytes(mask), INFO, SETTINGS)
    assert prepared.repaint_mask[0].tolist() == [False, True] * 4


def test_jpeg_and_webp_are_accepted():
    image, mask = scene(64, 48)
    for fmt in ("JPEG", "WEBP"):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        prepared = prepare_images(buffer.getvalue(), png_bytes(mask), INFO, SETTINGS)
        assert prepared.original_image.shape == (48, 64, 3)


def test_a_photo_with_an_exif_orientation_is_edited_upright_as_its_mask_was_drawn():
    image, mask = scene(40, 64)  # as displayed: portrait
    sent = exif_sideways(image)
    assert Image.open(io.BytesIO(sent)).size == (64, 40)  # stored landscape
    prepared = prepare_images(sent, png_bytes(mask), INFO, SETTINGS)
    assert prepared.original_image.shape == (64, 40, 3)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(sent))).convert("RGB"))
    assert np.array_equal(prepared.original_image, upright)
    assert np.array_equal(prepared.repaint_mask, np.asarray(mask) >= 128)


def test_transparency_is_kept_for_the_paste_back_and_the_models_see_rgb():
    image, mask = scene(64, 48)
    alpha = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    rgba = np.dstack([np.asarray(image), alpha])
    prepared = prepare_images(png_bytes(Image.fromarray(rgba, "RGBA")), png_bytes(mask), INFO, SETTINGS)
    assert np.array_equal(prepared.original_image, rgba)
    assert prepared.init_image.shape == (1, 3, 48, 64)
    generated = np.zeros((48, 64, 3), dtype=np.uint8)
    out = Image.open(io.BytesIO(encode_png(compose(generated, prepared.original_image, prepared.repaint_mask))))
    assert out.mode == "RGBA"
    pixels = np.asarray(out)
    assert np.array_equal(pixels[..., 3], alpha)  # the original alpha everywhere, masked pixels too
    keep = ~prepared.repaint_mask
    assert np.array_equal(pixels[keep], rgba[keep])  # unmasked pixels byte-exact, alpha included
    assert not pixels[prepared.repaint_mask][:, :3].any()  # masked colour from the edit


@pytest.mark.parametrize("mode", ["L", "P"])
def test_grayscale_and_palette_images_are_edited_as_rgb(mode):
    image, mask = scene(64, 48)
    prepared = prepare_images(png_bytes(image.convert(mode)), png_bytes(mask), INFO, SETTINGS)
    assert prepared.original_image.shape == (48, 64, 3)
    assert np.array_equal(prepared.original_image, np.asarray(image.convert(mode).convert("RGB")))
