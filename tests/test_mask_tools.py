"""Mask tools and task inputs, at pixel level: each changes exactly the pixels it should."""

import numpy as np
import pytest
from PIL import Image

from conftest import png_bytes
from smartedit.edit.masks import feather, grow, shape_mask
from smartedit.edit.parameters import EditParameters
from smartedit.edit.postprocessing import compose
from smartedit.edit.preprocessing import prepare_images
from smartedit.serving.settings import PreprocessSettings
from smartedit.diffusion.spec import PipelineInfo
from smartedit.edit.tasks import prefill_hole

INFO = PipelineInfo(vae_scale_factor=8, latent_channels=4, unet_in_channels=9, text_length=77,
                    text_hidden_size=32, vae_scaling_factor=0.18215, unet_sample_size=64,
                    working_resolution=512)


def _mask(height=40, width=50) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[10:22, 12:30] = True
    mask[22:30, 20:24] = True  # an L shape: corners and a concave edge
    return mask


def _distances_to(targets: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest True pixel of ``targets`` (brute force)."""
    ys, xs = np.nonzero(targets)
    grid_y, grid_x = np.mgrid[0:targets.shape[0], 0:targets.shape[1]]
    return np.sqrt((grid_y[..., None] - ys) ** 2 + (grid_x[..., None] - xs) ** 2).min(axis=-1)


@pytest.mark.parametrize("pixels", [1, 3, 6])
def test_growing_repaints_exactly_the_pixels_within_that_distance(pixels):
    mask = _mask()
    assert np.array_equal(grow(mask, pixels), _distances_to(mask) <= pixels)


@pytest.mark.parametrize("pixels", [1, 2, 3])
def test_shrinking_keeps_exactly_the_mask_pixels_farther_than_that_from_its_edge(pixels):
    mask = _mask()
    expected = mask & (_distances_to(~mask) > pixels)
    assert np.array_equal(grow(mask, -pixels), expected)


def test_the_photo_border_is_not_an_edge_when_shrinking():
    mask = np.zeros((20, 20), dtype=bool)
    mask[:, :8] = True  # touches the left, top and bottom borders
    shrunk = grow(mask, -2)
    assert shrunk[:, :6].all() and not shrunk[:, 6:].any()


def test_inverting_then_growing():
    mask = _mask()
    shaped = shape_mask(mask, invert=True, grow_by=2)
    assert np.array_equal(shaped, _distances_to(~mask) <= 2)
    assert np.array_equal(shape_mask(mask, invert=False, grow_by=0), mask)


def _disc(height=60, width=70) -> np.ndarray:
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    return (grid_y - 30) ** 2 + (grid_x - 33) ** 2 <= 20 ** 2


@pytest.mark.parametrize("blur", [0, 2, 5, 8])
@pytest.mark.parametrize("shape", ["L", "disc", "inverted disc"])
def test_feathering_reaches_no_farther_than_blur_pixels_and_is_full_inside(blur, shape):
    mask = {"L": _mask, "disc": _disc, "inverted disc": lambda: ~_disc()}[shape]()
    weights = feather(mask, blur)
    assert not weights[_distances_to(mask) > blur].any()  # beyond the feather (Euclidean): nothing of the edit
    # Full weight where the whole (2b+1)² kernel is inside the mask (Chebyshev distance to a kept pixel > b).
    ys, xs = np.nonzero(~mask)
    grid_y, grid_x = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    inner = np.maximum(abs(grid_y[..., None] - ys), abs(grid_x[..., None] - xs)).min(axis=-1) > blur
    assert (weights[inner] == 255).all()
    if blur:
        ring = (_distances_to(mask) <= blur) & ~inner
        assert ((weights[ring] > 0) & (weights[ring] < 255)).mean() > 0.5  # in between: a ramp


def test_a_round_subject_eroded_by_the_feather_width_gets_no_weight():
    subject = _disc()
    weights = feather(shape_mask(subject, invert=True, grow_by=0), 8)  # replace_background's paste-back
    eroded = grow(subject, -8)
    assert eroded.sum() > 400 and not weights[eroded].any()


def test_feathered_paste_back_keeps_weight_zero_pixels_byte_exact_and_mixes_the_rest():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    weights = feather(_mask(), 4)
    edited = compose(generated, original, weights, (0, 0, 50, 40))
    assert np.array_equal(edited[weights == 0], original[weights == 0])
    assert np.array_equal(edited[weights == 255], generated[weights == 255])
    partial = (weights > 0) & (weights < 255)
    w = weights[partial][:, None].astype(np.float64) / 255
    expected = original[partial] * (1 - w) + generated[partial] * w
    assert np.abs(edited[partial] - expected).max() <= 0.5 + 1e-9  # rounded to nearest


def _object_scene(width=64, height=48):
    """A smooth background (a gradient) with a distinct red square on it, and a mask covering the square."""
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([40 + x, 90 + y, 160 - x // 2], axis=-1).astype(np.uint8)
    image = background.copy()
    image[16:32, 24:40] = (230, 20, 20)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[16:32, 24:40] = 255
    return Image.fromarray(image), Image.fromarray(mask), background


def test_removal_starts_denoising_from_the_background_continued_through_the_hole():
    image, mask, background = _object_scene()
    settings = PreprocessSettings()
    removal = prepare_images(png_bytes(image), png_bytes(mask), INFO, settings,
                             EditParameters(prompt="", task="remove", mask_grow=8, strength=0.75))
    inpaint = prepare_images(png_bytes(image), png_bytes(mask), INFO, settings, EditParameters(prompt=""))
    hole = np.asarray(mask) >= 128
    start = ((removal.init_image[0].transpose(1, 2, 0) + 1) * 127.5)[hole]
    object_colour = np.array([230, 20, 20])
    # Inpaint starts from the object itself; removal from colours near the background around it.
    assert np.abs(((inpaint.init_image[0].transpose(1, 2, 0) + 1) * 127.5)[hole] - object_colour).mean() < 1
    assert np.abs(start - background[hole]).mean() < 12
    assert np.abs(start - object_colour).mean() > 100
    assert removal.repaint.sum() > inpaint.repaint.sum()  # grown by 8 px


def test_prefill_leaves_the_pixels_outside_the_hole_alone():
    image, mask, _ = _object_scene()
    pixels, hole = np.asarray(image), np.asarray(mask) >= 128
    filled = prefill_hole(pixels, hole)
    assert np.array_equal(filled[~hole], pixels[~hole])


def test_background_replacement_repaints_everything_but_the_subject():
    image, mask, _ = _object_scene()
    prepared = prepare_images(png_bytes(image), png_bytes(mask), INFO, PreprocessSettings(),
                              EditParameters(prompt="a beach", task="replace_background", mask_blur=8))
    assert np.array_equal(prepared.repaint, np.asarray(mask) < 128)
    assert prepared.latent_mask[0, 0, 3, 4] == 0.0 and prepared.latent_mask[0, 0, 0, 0] == 1.0
