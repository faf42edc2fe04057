"""Functional tier: the real tritonserver on the real model repository, over real gRPC.

Results are compared with diffusers' StableDiffusionInpaintPipeline run in the test on the same
tiny model folder.
"""

from __future__ import annotations

import ipaddress
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from conftest import exif_sideways, png_bytes, scene
from reference import diffusers_inpaint, psnr
from smartedit_client import InvalidRequestError
from test_engine_serving import log_entries

pytestmark = pytest.mark.functional

EDIT = dict(prompt="a red chair", negative_prompt="ugly, blurry", num_inference_steps=5, guidance_scale=7.5, seed=1234)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
@pytest.mark.parametrize("size", [(64, 64), (80, 48)], ids=["64x64", "80x48"])
def test_served_edit_matches_diffusers(client, tiny_pipeline, scheduler, size):
    image, mask = scene(*size, seed=size[0])
    result = client.inpaint(image=image, mask_image=mask, scheduler=scheduler, **EDIT)
    served = np.asarray(result.image.convert("RGB"))
    reference = diffusers_inpaint(tiny_pipeline, image, mask, scheduler=scheduler, **EDIT)
    inside = np.asarray(mask) >= 128
    assert served.shape == reference.shape == np.asarray(image).shape
    assert psnr(served[inside], reference[inside]) >= 40
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])  # outside the mask: as sent
    assert result.seed_used == EDIT["seed"]


def test_strength_below_one_matches_diffusers(client, tiny_pipeline):
    image, mask = scene(48, 32, seed=3)
    edit = dict(EDIT, strength=0.6)
    served = np.asarray(client.inpaint(image=image, mask_image=mask, scheduler="ddim", **edit).image)
    reference = diffusers_inpaint(tiny_pipeline, image, mask, scheduler="ddim", **edit)
    inside = np.asarray(mask) >= 128
    assert psnr(served[inside], reference[inside]) >= 40
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])  # outside the mask: as sent


def test_image_off_the_size_grid_comes_back_at_its_size_with_outside_pixels_intact(client):
    image, mask = scene(67, 45, seed=5)
    result = client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="x", num_inference_steps=2)
    served = np.asarray(result.image)
    assert result.image.size == (67, 45)
    outside = np.asarray(mask) < 128
    assert np.array_equal(served[outside], np.asarray(image)[outside])


def _photo(width: int, height: int, mask_box: tuple[int, int, int, int]) -> tuple[Image.Image, Image.Image]:
    """A smooth photo-like image (cheap to send as PNG) and a mask repainting ``mask_box``."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], axis=-1)
    mask = np.zeros((height, width), dtype=np.uint8)
    left, top, right, bottom = mask_box
    mask[top:bottom, left:right] = 255
    return Image.fromarray(rgb.astype(np.uint8)), Image.fromarray(mask)


def _documented_region(inside: np.ndarray, padding: int, resolution: int, factor: int):
    """The box (left, top, right, bottom) and processing size (width, height) that the rules in
    ``smartedit/edit/regions.py``'s docstring give, worked out here on their own: the reference must not
    share the planner it checks. Only the cases the photos below reach: a box grown to the processing
    size's aspect inside the photo, or the whole photo."""
    height, width = inside.shape
    rows, columns = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    left, top = max(0, columns[0] - padding), max(0, rows[0] - padding)
    right, bottom = min(width, columns[-1] + 1 + padding), min(height, rows[-1] + 1 + padding)

    def working_area(aspect, quantum):  # the largest sides in steps of `quantum` within resolution²
        return (int(resolution * math.sqrt(aspect) // quantum * quantum),
                int(resolution / math.sqrt(aspect) // quantum * quantum))

    if (right - left) * (bottom - top) >= width * height / 2:  # half the photo or more: all of it
        return (0, 0, width, height), working_area(width / height, factor)
    size = working_area(min(max((right - left) / (bottom - top), 0.5), 2.0), resolution // 8)
    # Grown about its centre to the size's aspect, and to at least half the size (enlarged 2x at most).
    want = max(right - left, (bottom - top) * size[0] / size[1], size[0] / 2)
    grown_w, grown_h = math.ceil(want), math.ceil(want * size[1] / size[0])
    box_left, box_top = round((left + right - grown_w) / 2), round((top + bottom - grown_h) / 2)
    box = (box_left, box_top, box_left + grown_w, box_top + grown_h)
    assert 0 <= box[0] and 0 <= box[1] and box[2] <= width and box[3] <= height  # no photo edge in the way
    assert grown_w * grown_h < width * height / 2
    return box, size


def _edited_in_place(generated: np.ndarray, original: np.ndarray, inside: np.ndarray, box) -> np.ndarray:
    """``generated`` scaled back to ``box`` and pasted into ``original`` where the mask repaints."""
    left, top, right, bottom = box
    scaled = np.asarray(Image.fromarray(generated).resize((right - left, bottom - top), resample=Image.LANCZOS))
    pasted = original.copy()
    window = pasted[top:bottom, left:right]
    window[inside[top:bottom, left:right]] = scaled[inside[top:bottom, left:right]]
    return pasted


@pytest.mark.parametrize("size,mask_box", [
    ((2400, 1600), (1100, 700, 1220, 790)),  # a small mask on a large photo: edited as a crop around it
    ((1000, 800), (50, 40, 950, 760)),  # a mask covering 80%: the whole photo, downscaled
], ids=["crop", "whole-photo"])
def test_a_photo_larger_than_the_working_area_is_edited_there_and_pasted_back(server, client, tiny_pipeline, size,
                                                                              mask_box):
    image, mask = _photo(*size, mask_box)
    request_id = f"large-photo-{size[0]}x{size[1]}"
    result = client.inpaint(image=image, mask_image=mask, scheduler="ddim", crop_padding=32, request_id=request_id,
                            **EDIT)
    served, original = np.asarray(result.image), np.asarray(image)
    inside = np.asarray(mask) >= 128
    assert result.image.size == size
    assert np.array_equal(served[~inside], original[~inside])  # byte-exact outside the mask, at any size
    # The reference: diffusers' pipeline on the region the documented rules give, at the size they give,
    # pasted back with the few lines above; the model's working resolution is read from diffusers.
    factor = tiny_pipeline.vae_scale_factor
    box, (width, height) = _documented_region(inside, 32, tiny_pipeline.unet.config.sample_size * factor, factor)
    assert max(width, height) <= 2 * 256  # the tiny model's working resolution, not the photo's
    # The server's own log names the box and size it planned: a planner off the rules shows here first.
    (logged,) = log_entries(server.log_file, request_id, "preprocess")
    assert (tuple(logged["edit_box"]), logged["edit_width"], logged["edit_height"]) == (box, width, height)
    crop = [part.crop(box).resize((width, height), resample=Image.LANCZOS) for part in (image, mask)]
    generated = diffusers_inpaint(tiny_pipeline, *crop, scheduler="ddim", **EDIT)
    reference = _edited_in_place(generated, original, inside, box)
    assert psnr(served[inside], reference[inside]) >= 40


def test_an_edit_over_the_cost_budget_is_refused_naming_the_steps(client):
    image, mask = scene(256, 256)  # the tiny model's working area: its budget allows 500 steps here
    with pytest.raises(InvalidRequestError, match=r"num_inference_steps: 501 x strength 1 = 501 denoising steps "
                                                  r"at 256x256 exceed the budget of this server: at most 500 denoising steps"):
        client.inpaint(image=image, mask_image=mask, prompt="x", num_inference_steps=501)


def test_a_transparent_image_comes_back_with_its_alpha_and_a_sideways_photo_upright(client):
    image, mask = scene(48, 40, seed=6)
    alpha = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (40, 1))
    rgba = np.dstack([np.asarray(image), alpha])
    result = client.inpaint(image=png_bytes(Image.fromarray(rgba, "RGBA")), mask_image=mask, prompt="x",
                            num_inference_steps=2)
    served = np.asarray(result.image)
    assert result.image.mode == "RGBA" and np.array_equal(served[..., 3], alpha)
    outside = np.asarray(mask) < 128
    assert np.array_equal(served[outside], rgba[outside])

    portrait, portrait_mask = scene(40, 48, seed=7)  # as displayed; stored sideways with EXIF orientation 6
    result = client.inpaint(image=exif_sideways(portrait), mask_image=portrait_mask, prompt="x",
                            num_inference_steps=2)
    assert result.image.size == (40, 48)


def test_same_seed_same_png_and_seed_used_reproduces(client):
    image, mask = scene(48, 48, seed=9)
    first = client.inpaint(image=image, mask_image=mask, prompt="a cat", num_inference_steps=3, seed=99)
    second = client.inpaint(image=image, mask_image=mask, prompt="a cat", num_inference_steps=3, seed=99)
    assert first.png == second.png
    unseeded = client.inpaint(image=image, mask_image=mask, prompt="a cat", num_inference_steps=3)
    replay = client.inpaint(image=image, mask_image=mask, prompt="a cat", num_inference_steps=3,
                            seed=unseeded.seed_used)
    assert replay.png == unseeded.png
    other = client.inpaint(image=image, mask_image=mask, prompt="a cat", num_inference_steps=3, seed=100)
    assert other.png != first.png  # the seed matters, so the equalities above mean something


def _raw_request(server, tensors: dict[str, tuple[str, object]]):
    """Send tensors as given (bypassing the SDK's checks) straight to the ensemble."""
    inputs = []
    for name, (datatype, value) in tensors.items():
        dtype = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}[datatype]
        tensor = grpcclient.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value], dtype=dtype))
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(server.address.grpc) as raw:
        return raw.infer("inpaint", inputs)


def _valid_tensors():
    image, mask = scene(32, 32)
    return {"image": ("BYTES", png_bytes(image)), "mask_image": ("BYTES", png_bytes(mask)),
            "prompt": ("BYTES", b"a cat"), "num_inference_steps": ("INT32", 2)}


@pytest.mark.parametrize("field,change,fragment", [
    ("image", ("BYTES", b"definitely not an image"), "image: is not a PNG, JPEG or WebP image"),
    ("image", "truncated", "image: could not be decoded"),
    ("mask_image", ("BYTES", png_bytes(Image.new("L", (32, 24)))), "mask_image: is 32x24 but image is 32x32"),
    ("num_inference_steps", ("INT32", 0), "num_inference_steps: must be between 1 and"),
    ("num_inference_steps", ("INT32", -5), "got -5"),
    ("guidance_scale", ("FP32", float("nan")), "guidance_scale: must be a finite number, got nan"),
    ("scheduler", ("BYTES", b"warp-drive"), "scheduler: unknown scheduler 'warp-drive'"),
    ("mask_image", None, "mask_image"),
    ("prompt", None, "prompt"),
    ("crop_padding", ("INT32", -1), "crop_padding: must be between 0 and 2048, got -1"),
    ("mask_image", ("BYTES", png_bytes(Image.new("L", (32, 32)))), "mask_image: has no pixel to repaint"),
])
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(server, client, field, change, fragment):
    from tritonclient.utils import InferenceServerException

    tensors = _valid_tensors()
    if change is None:
        del tensors[field]
    elif change == "truncated":
        tensors[field] = ("BYTES", tensors[field][1][:60])
    else:
        tensors[field] = change
    with pytest.raises(InferenceServerException) as caught:
        _raw_request(server, tensors)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert field in caught.value.message() and fragment in caught.value.message()
    # ... and the next valid request is served.
    image, mask = scene(32, 32)
    assert client.inpaint(image=image, mask_image=mask, prompt="ok", num_inference_steps=2).image.size == (32, 32)


def test_sdk_raises_invalid_request_error_naming_the_field(client):
    image, mask = scene(32, 32)
    with pytest.raises(InvalidRequestError, match="num_inference_steps") as caught:
        client.inpaint(image=image, mask_image=mask, prompt="x", num_inference_steps=0)
    assert caught.value.status == "INVALID_ARGUMENT"


def test_four_concurrent_requests_all_succeed_with_correct_results(client):
    jobs = [(scene(48, 32, seed=s), s) for s in range(4)]

    def edit(job):
        (image, mask), seed = job
        return client.inpaint(image=image, mask_image=mask, prompt=f"thing {seed}", num_inference_steps=4,
                              seed=seed)

    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(edit, jobs))
    for job, result in zip(jobs, concurrent):
        alone = edit(job)  # the same edit on its own: what the concurrent one must equal
        assert result.png == alone.png
        assert result.seed_used == job[1]


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or address).is_loopback


def test_server_listens_on_loopback_only(server):
    import psutil

    ports = {server.address.grpc_port, server.address.http_port, server.address.metrics_port}
    process = psutil.Process(server.process.pid)
    listening = [c for p in [process] + process.children(recursive=True)
                 for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert ports <= {c.laddr.port for c in listening}
    assert all(_is_loopback(c.laddr.ip) for c in listening), listening
