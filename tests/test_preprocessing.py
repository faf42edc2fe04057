"""Request validation: every rejection names the field and the value."""

import dataclasses
import io
import math

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import exif_sideways, png_bytes, scene
from smartedit.errors import RequestError
from smartedit.edit.postprocessing import compose, encode_png
from smartedit.edit.parameters import EditParameters, resolve_parameters
from smartedit.edit.preprocessing import prepare_images
from smartedit.serving.settings import PreprocessSettings
from smartedit.diffusion.spec import PipelineInfo
from smartedit.edit.tasks import REMOVAL_NEGATIVE_PROMPT, REMOVAL_PROMPT

INFO = PipelineInfo(vae_scale_factor=8, latent_channels=4, unet_in_channels=9, text_length=77,
                    text_hidden_size=32, vae_scaling_factor=0.18215, unet_sample_size=64,
                    working_resolution=512)
SETTINGS = PreprocessSettings()


def _params(**overrides):
    """The record of a request sending ``prompt`` "a cat" and ``overrides`` (wire values)."""
    values = {"prompt": b"a cat", **overrides}
    return resolve_parameters(values.get, SETTINGS)


def test_defaults_are_applied_and_a_seed_is_drawn():
    params = _params()
    assert (params.num_inference_steps, params.guidance_scale, params.strength, params.scheduler) == (50, 7.5, 1.0, "ddim")
    assert (params.task, params.eta, params.mask_grow, params.mask_blur, params.invert_mask, params.num_images) == (
        "inpaint", 0.0, 0, 0, False, 1)
    assert params.negative_prompt == "" and 0 <= params.seed < 2**63
    assert _params().seed != params.seed


def test_each_task_sets_its_defaults_and_the_request_overrides_them():
    removal = _params(prompt=b"", task=b"remove")
    assert (removal.strength, removal.mask_grow) == (0.75, 8)
    assert removal.prompt == REMOVAL_PROMPT and removal.negative_prompt == REMOVAL_NEGATIVE_PROMPT
    assert _params(task=b"remove").prompt == "a cat"  # a prompt sent is kept
    assert _params(task=b" Remove ", strength=0.5, mask_grow=0).strength == 0.5
    background = _params(task=b"replace_background")
    assert background.mask_blur == 8 and background.inverts_mask and not background.invert_mask
    assert _params(task=b"replace_background", mask_blur=0).mask_blur == 0


def test_a_float_is_read_as_the_decimal_the_caller_sent_not_its_float32_neighbour():
    """0.7 arrives as float32 0.699999988: read as that, 10 steps at strength 0.7 would run 6 where diffusers
    (given the Python 0.7) runs 7; and a default 0.9999 would be carried apart from the same value sent."""
    import numpy as np

    params = _params(strength=np.float32(0.7), num_inference_steps=np.int32(10), eta=np.float32(0.3))
    assert (params.strength, params.eta, params.denoising_steps) == (0.7, 0.3, int(10 * 0.7)) == (0.7, 0.3, 7)
    assert _params(guidance_scale=np.float32(0.9999)).guidance_scale == 0.9999


def test_the_record_travels_as_one_tensor_and_names_its_variations():
    params = _params(seed=41, num_images=3, eta=0.5, invert_mask=True)
    assert EditParameters.from_tensor(params.as_tensor()) == params
    assert params.seeds == [41, 42, 43]
    assert params.variation(2) == dataclasses.replace(params, seed=43, num_images=1)


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
    (dict(crop_padding=-1), "crop_padding", "must be between 0 and 2048, got -1"),
    (dict(crop_padding=5000), "crop_padding", "got 5000"),
    (dict(task=b"paint"), "task", "unknown task 'paint'; known: inpaint, remove, replace_background"),
    (dict(eta=1.5), "eta", "must be between 0 and 1, got 1.5"),
    (dict(eta=-0.1), "eta", "got -0.1"),
    (dict(eta=0.5, scheduler=b"euler"), "eta", "0.5 has no effect with scheduler euler: only ddim and tcd take it"),
    (dict(mask_grow=300), "mask_grow", "must be between -256 and 256, got 300"),
    (dict(mask_blur=-1), "mask_blur", "must be between 0 and 256, got -1"),
    (dict(num_images=0), "num_images", "must be between 1 and 8, got 0"),
    (dict(num_images=9), "num_images", "got 9"),
    (dict(seed=2**63 - 2, num_images=4), "seed", "past the INT64 range"),
    (dict(invert_mask=True, task=b"replace_background"), "invert_mask", "contradicts task replace_background"),
    (dict(num_inference_steps=991), "num_inference_steps", "must be between 1 and 990, got 991"),
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
    big = Image.new("RGB", (7000, 4000))
    with pytest.raises(RequestError, match=r"image: is 7000x4000 = 28000000 pixels; the limit is 25165824"):
        prepare_images(png_bytes(big), png_bytes(big.convert("L")), INFO, SETTINGS)


@pytest.mark.parametrize("side", [14000, 30000])  # past Pillow's own "decompression bomb" limit (2 x 89 MP)
def test_a_huge_image_that_compresses_to_little_is_refused_naming_its_size_and_the_limit(side):
    small_file = io.BytesIO()
    Image.new("1", (side, side)).save(small_file, format="PNG")  # 24 KB / 109 KB of file
    assert len(small_file.getvalue()) < 200_000
    with pytest.raises(RequestError) as caught:
        prepare_images(small_file.getvalue(), png_bytes(Image.new("L", (8, 8))), INFO, SETTINGS)
    assert caught.value.field == "image"
    assert str(caught.value) == f"image: is {side}x{side} = {side * side} pixels; the limit is 25165824"


def test_a_mask_with_transparency_is_read_as_a_painted_layer_over_black():
    """Opaque white paint repaints, transparent keeps (whatever its colour), half-transparent white is
    half grey: what an image tool's layer, painted on nothing and exported, means."""
    layer = Image.new("RGBA", (8, 8), (255, 255, 255, 0))  # transparent *white*: keep
    layer.paste((255, 255, 255, 255), (0, 0, 4, 8))  # opaque white stroke: repaint
    layer.paste((255, 255, 255, 127), (4, 0, 6, 8))  # half transparent: below the 128 threshold, kept
    layer.paste((255, 255, 255, 200), (6, 0, 8, 8))  # mostly opaque: repainted
    prepared = prepare_images(png_bytes(Image.new("RGB", (8, 8), (10, 20, 30))), png_bytes(layer), INFO, SETTINGS)
    assert prepared.repaint_mask[0].tolist() == [True] * 4 + [False] * 2 + [True] * 2
    # A grey mask with alpha (what "export layer" gives in grey) reads the same way.
    grey = prepare_images(png_bytes(Image.new("RGB", (8, 8))), png_bytes(layer.convert("LA")), INFO, SETTINGS)
    assert grey.repaint_mask[0].tolist() == [True] * 4 + [False] * 2 + [True] * 2


def test_sizes_off_the_grid_are_processed_at_a_multiple_and_returned_whole():
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
    out = Image.open(io.BytesIO(encode_png(compose(generated, prepared.original_image, prepared.repaint_mask,
                                                   prepared.region.box))))
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


def test_an_all_black_mask_is_refused_naming_the_mask():
    image, _ = scene(64, 48)
    with pytest.raises(RequestError, match="mask_image: has no pixel to repaint"):
        prepare_images(png_bytes(image), png_bytes(Image.new("L", (64, 48))), INFO, SETTINGS)


def _photo_and_mask(width, height, box):
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    mask = np.zeros((height, width), dtype=np.uint8)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = 255
    return photo, Image.fromarray(mask)


def test_a_large_photo_is_edited_as_a_crop_around_the_mask_at_the_working_resolution():
    photo, mask = _photo_and_mask(3000, 2000, (1000, 800, 1400, 1100))  # a 400x300 mask
    prepared = prepare_images(png_bytes(photo), png_bytes(mask), INFO, SETTINGS, EditParameters(prompt="", crop_padding=32))
    region = prepared.region
    # The box holds the mask and its padding, has the processing size's aspect, and stays in the photo.
    assert region.left <= 1000 - 32 and region.top <= 800 - 32 and region.right >= 1432 and region.bottom >= 1132
    assert abs((region.right - region.left) / (region.bottom - region.top) - region.width / region.height) < 0.01
    assert region.width % 64 == 0 and region.height % 64 == 0  # steps of working_resolution / 8
    assert 0.8 * 512 ** 2 <= region.width * region.height <= 1.25 * 512 ** 2
    assert prepared.init_image.shape == (1, 3, region.height, region.width)
    assert prepared.latent_mask.shape == (1, 1, region.height // 8, region.width // 8)
    assert prepared.repaint_mask.shape == (region.bottom - region.top, region.right - region.left)
    assert prepared.original_image.shape == (2000, 3000, 3)


def test_paste_back_changes_only_masked_pixels_of_the_original():
    photo, mask = _photo_and_mask(3000, 2000, (1000, 800, 1400, 1100))
    prepared = prepare_images(png_bytes(photo), png_bytes(mask), INFO, SETTINGS)
    generated = np.full((prepared.region.height, prepared.region.width, 3), 7, dtype=np.uint8)
    edited = compose(generated, prepared.original_image, prepared.repaint_mask, prepared.region.box)
    masked = np.asarray(mask) >= 128
    assert np.array_equal(edited[~masked], prepared.original_image[~masked])
    assert (edited[masked] == 7).all()


def test_a_tiny_mask_is_given_context_rather_than_enlarged_past_two_times():
    photo, mask = _photo_and_mask(3000, 2000, (1500, 1000, 1504, 1004))
    region = prepare_images(png_bytes(photo), png_bytes(mask), INFO, SETTINGS, EditParameters(prompt="", crop_padding=0)).region
    assert region.width <= 2 * (region.right - region.left) and region.height <= 2 * (region.bottom - region.top)


def test_a_mask_near_the_edge_keeps_its_box_inside_the_photo():
    photo, mask = _photo_and_mask(3000, 2000, (2900, 0, 3000, 60))
    region = prepare_images(png_bytes(photo), png_bytes(mask), INFO, SETTINGS).region
    assert region.right == 3000 and region.top == 0 and region.left >= 0 and region.bottom <= 2000
    assert region.left <= 2900 - 32 and region.bottom >= 60 + 32


def test_a_thin_mask_is_grown_across_to_about_two_to_one():
    photo, mask = _photo_and_mask(3000, 2000, (500, 1000, 1700, 1010))  # 1200 x 10
    region = prepare_images(png_bytes(photo), png_bytes(mask), INFO, SETTINGS).region
    # 2:1 at most, give or take the 64 px steps of the processing size (704 x 320 here)
    assert region.width / region.height <= 2.25
    assert abs((region.right - region.left) / (region.bottom - region.top) - region.width / region.height) < 0.02
    assert region.left <= 500 - 32 and region.right >= 1700 + 32


def test_a_box_the_photo_edge_stops_keeps_its_aspect_and_is_enlarged_at_most_two_times():
    photo, mask = _photo_and_mask(150, 2000, (60, 1000, 70, 1010))
    region = prepare_images(png_bytes(photo), png_bytes(mask), INFO, SETTINGS).region
    assert (region.left, region.right) == (0, 150)  # as wide as the photo
    assert region.width <= 2 * 150 and region.height <= 2 * (region.bottom - region.top)
    assert region.width % 8 == 0 and region.height % 8 == 0 and region.width * region.height <= 512 ** 2


def test_every_planned_size_stays_within_the_working_area():
    from smartedit.edit.regions import plan_edit_region

    rng = np.random.default_rng(0)
    for _ in range(200):
        width, height = (int(v) for v in rng.integers(8, 5000, 2))
        left, top = int(rng.integers(0, width)), int(rng.integers(0, height))
        right, bottom = int(rng.integers(left + 1, width + 1)), int(rng.integers(top + 1, height + 1))
        mask = np.zeros((height, width), dtype=bool)
        mask[top:bottom, left:right] = True
        region = plan_edit_region(mask, INFO, 32)
        assert region.width % 8 == 0 and region.height % 8 == 0 and region.width >= 8 and region.height >= 8
        assert region.width * region.height <= max(512 ** 2, width * height)
        assert region.left <= left and region.top <= top and region.right >= right and region.bottom >= bottom
        assert 0 <= region.left < region.right <= width and 0 <= region.top < region.bottom <= height


def test_a_mask_covering_most_of_the_photo_edits_the_whole_photo_downscaled():
    photo, mask = _photo_and_mask(2048, 1024, (100, 100, 1900, 1000))
    region = prepare_images(png_bytes(photo), png_bytes(mask), INFO, SETTINGS).region
    assert region.box == (0, 0, 2048, 1024)
    assert (region.width, region.height) == (720, 360)  # aspect 2, area up to 512^2, multiples of 8


def test_a_photo_within_the_working_area_is_edited_whole_at_its_own_size():
    photo, mask = _photo_and_mask(500, 300, (10, 10, 20, 20))
    region = prepare_images(png_bytes(photo), png_bytes(mask), INFO, SETTINGS).region
    assert region.box == (0, 0, 500, 300) and (region.width, region.height) == (496, 296)


def test_cost_budget_refuses_more_steps_than_the_working_resolution_allows():
    from smartedit.edit.preprocessing import check_cost
    from smartedit.edit.regions import EditRegion

    region = EditRegion(0, 0, 512, 512, 512, 512)
    check_cost(_params(num_inference_steps=500), region, INFO, SETTINGS)
    with pytest.raises(RequestError, match=r"num_inference_steps: 501 x strength 1 = 501 denoising steps at "
                                           r"512x512 exceed the budget of this server: at most 500 denoising steps"):
        check_cost(_params(num_inference_steps=501), region, INFO, SETTINGS)
    check_cost(_params(num_inference_steps=990, strength=0.5), region, INFO, SETTINGS)  # 495 steps run
    check_cost(_params(num_inference_steps=990), EditRegion(0, 0, 256, 256, 256, 256), INFO, SETTINGS)


def test_the_samplers_said_to_take_eta_are_those_whose_step_takes_it():
    import inspect

    import diffusers

    from smartedit.diffusion.samplers import SAMPLERS, SAMPLERS_WITH_ETA

    takes_eta = {name for name, cls in SAMPLERS.items()
                 if "eta" in inspect.signature(getattr(diffusers, cls).step).parameters}
    assert takes_eta == SAMPLERS_WITH_ETA
