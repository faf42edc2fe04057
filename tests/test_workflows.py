"""Editing workflows served end to end: tasks, mask tools, variations, reproducible PNGs, eta.

The real tritonserver on the tiny model's repository, over real gRPC with the SDK and the CLI.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from conftest import png_bytes, scene
from reference import diffusers_inpaint, psnr
from smartedit.edit.masks import feather, shape_mask
from smartedit_client import InvalidRequestError, png_parameters
from smartedit_client import _contract as wire

pytestmark = pytest.mark.functional

EDIT = dict(prompt="a red chair", negative_prompt="ugly", num_inference_steps=4, guidance_scale=7.5, seed=99)


def _changed(result, image: Image.Image) -> np.ndarray:
    """[H, W] bool: the pixels the edit changed."""
    return (np.asarray(result.image.convert("RGB")) != np.asarray(image.convert("RGB"))).any(axis=-1)


def test_variations_are_the_single_image_edits_of_their_seeds(client):
    image, mask = scene(64, 48, seed=4)
    result = client.inpaint(image=image, mask_image=mask, num_images=3, **EDIT)
    assert [edited.seed_used for edited in result.images] == [99, 100, 101]
    assert len({edited.png for edited in result.images}) == 3
    for edited in result.images:
        alone = client.inpaint(image=image, mask_image=mask, **dict(EDIT, seed=edited.seed_used))
        assert alone.png == edited.png  # byte for byte, parameters chunk included


def test_variations_are_streamed_too(client):
    image, mask = scene(48, 32, seed=5)
    with client.inpaint_stream(image=image, mask_image=mask, num_images=2, preview_every=0, **EDIT) as stream:
        events = list(stream)
    assert [edited.seed_used for edited in stream.result.images] == [99, 100]
    assert stream.result.images[1].png == client.inpaint(image=image, mask_image=mask, **dict(EDIT, seed=100)).png
    assert [e.step for e in events[:-1]] == [1, 2, 3, 4]  # the first variation's progress


def test_every_png_carries_its_parameters_and_replay_reproduces_it(client, tmp_path, server):
    image, mask = scene(64, 48, seed=6)
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    (tmp_path / "mask.png").write_bytes(png_bytes(mask))
    result = client.inpaint(image=image, mask_image=mask, task="remove", prompt="", mask_blur=3, eta=0.3,
                            num_inference_steps=5)
    carried = result.parameters
    assert carried["parameters"]["task"] == "remove" and carried["parameters"]["seed"] == result.seed_used
    assert carried["parameters"]["mask_grow"] == 8 and carried["parameters"]["eta"] == pytest.approx(0.3)
    assert carried["model"] and len(carried["weights_sha256"]) == 64 and carried["smartedit_version"]
    (tmp_path / "first.png").write_bytes(result.png)
    command = [sys.executable, "-m", "smartedit_client.cli", "--url", server.address.grpc,
               "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png")]
    replayed = subprocess.run(command + ["--replay", str(tmp_path / "first.png"), "--out", str(tmp_path / "again.png")],
                              capture_output=True, text=True, timeout=120)
    assert replayed.returncode == 0, replayed.stderr
    assert (tmp_path / "again.png").read_bytes() == result.png
    assert client.replay(result.png, image=image, mask_image=mask).png == result.png  # and from the SDK
    # A re-encoded copy has lost them: a clear error, no edit.
    Image.open(tmp_path / "first.png").convert("RGB").save(tmp_path / "copy.png")
    refused = subprocess.run(command + ["--replay", str(tmp_path / "copy.png"), "--out", str(tmp_path / "x.png")],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "carries no 'smartedit' parameters" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_cli_writes_one_file_per_variation(server, tmp_path):
    image, mask = scene(48, 32, seed=7)
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    (tmp_path / "mask.png").write_bytes(png_bytes(mask))
    run = subprocess.run([sys.executable, "-m", "smartedit_client.cli", "--url", server.address.grpc,
                          "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                          "--prompt", "a lamp", "--steps", "3", "--seed", "5", "--num-images", "2",
                          "--out", str(tmp_path / "out.png")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seeds = [png_parameters((tmp_path / f"out-{i}.png").read_bytes())["parameters"]["seed"] for i in (1, 2)]
    assert seeds == [5, 6]


@pytest.mark.parametrize("options", [dict(mask_grow=5), dict(mask_grow=-3), dict(invert_mask=True)],
                         ids=["grow", "shrink", "invert"])
def test_mask_options_change_exactly_the_pixels_of_the_shaped_mask(client, options):
    image, mask = scene(64, 48, seed=8)
    result = client.inpaint(image=image, mask_image=mask, **EDIT, **options)
    expected = shape_mask(np.asarray(mask) >= 128, invert=options.get("invert_mask", False),
                          grow_by=options.get("mask_grow", 0))
    changed = _changed(result, image)
    assert not changed[~expected].any()  # nothing outside the shaped mask moved
    assert changed[expected].mean() > 0.97  # and the tiny model's colours differ almost everywhere inside


def test_mask_blur_feathers_the_edge_and_leaves_the_rest_byte_exact(client):
    image, mask = scene(64, 48, seed=9)
    sharp = client.inpaint(image=image, mask_image=mask, **EDIT)
    soft = client.inpaint(image=image, mask_image=mask, mask_blur=4, **EDIT)
    weights = feather(np.asarray(mask) >= 128, 4)
    original, edit = np.asarray(image), np.asarray(sharp.image)
    served = np.asarray(soft.image)
    assert np.array_equal(served[weights == 0], original[weights == 0])
    assert np.array_equal(served[weights == 255], edit[weights == 255])
    inside = np.asarray(mask) >= 128
    ring = (weights > 0) & (weights < 255)
    # Inside the mask the sharp result is the model's edit itself: the feathered one mixes it in by weight.
    mixed = ring & inside
    w = weights[mixed][:, None] / 255.0
    assert np.abs(served[mixed] - (original[mixed] * (1 - w) + edit[mixed] * w)).max() <= 0.5 + 1e-9
    # Outside it, the feather reaches into pixels the sharp edit kept as sent.
    assert _changed(soft, image)[ring & ~inside].mean() > 0.5


def test_background_replacement_keeps_the_subject_byte_exact(client):
    image, mask = scene(64, 48, seed=10)  # the mask's rectangle is the subject
    result = client.inpaint(image=image, mask_image=mask, task="replace_background", prompt="a beach",
                            num_inference_steps=4, seed=3)
    subject = np.asarray(mask) >= 128
    eroded = shape_mask(subject, invert=False, grow_by=-8)  # the default feather is 8 px wide
    served = np.asarray(result.image)
    assert eroded.any() and np.array_equal(served[eroded], np.asarray(image)[eroded])
    assert _changed(result, image)[~subject].mean() > 0.9  # the background is repainted


def test_removal_leaves_less_of_the_object_than_an_inpaint_with_an_empty_prompt(client):
    """On the tiny model (random weights) the denoiser paints noise, so this measures what the pipeline
    controls: removal denoises from the hole filled with the background at strength 0.75, inpaint from
    pure noise over the object's own masked latents. The number: mean colour distance inside the hole
    to the object's colour and to the background's."""
    y, x = np.mgrid[0:64, 0:96]
    background = np.stack([60 + x // 2, 120 + y // 2, 150 - x // 3], axis=-1).astype(np.uint8)
    photo = background.copy()
    photo[20:44, 36:60] = (235, 25, 25)
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[20:44, 36:60] = 255
    hole = mask >= 128
    image = Image.fromarray(photo)
    distances = {}
    for task, prompt in (("remove", ""), ("inpaint", "")):
        edited = np.asarray(client.inpaint(image=image, mask_image=Image.fromarray(mask), task=task, prompt=prompt,
                                           num_inference_steps=20, seed=11).image).astype(float)
        distances[task] = (np.abs(edited[hole] - (235, 25, 25)).mean(), np.abs(edited[hole] - background[hole]).mean())
    removal_to_object, removal_to_background = distances["remove"]
    inpaint_to_object, inpaint_to_background = distances["inpaint"]
    # Measured on this tiny model (seed 11), mean absolute RGB distance in the hole: remove 108 from the
    # object and 39 from the background; inpaint 102 and 45. The random denoiser leaves little of the
    # object either way; removal is nearer the background and farther from the object, by a few units.
    assert removal_to_background + 40 < removal_to_object, distances
    assert removal_to_object > inpaint_to_object + 3, distances
    assert removal_to_background < inpaint_to_background - 3, distances


@pytest.mark.parametrize("overrides,fragment", [
    (dict(task="paint"), "task: unknown task 'paint'"),
    (dict(num_images=9), "num_images: must be between 1 and 8, got 9"),
    (dict(mask_grow=-300), "mask_grow: must be between -256 and 256, got -300"),
    (dict(mask_blur=1000), "mask_blur: must be between 0 and 256, got 1000"),
    (dict(eta=2.0), "eta: must be between 0 and 1, got 2.0"),
    (dict(task="replace_background", invert_mask=True), "invert_mask: true contradicts task replace_background"),
    (dict(mask_grow=-40), "mask_grow: -40 shrinks the mask to nothing"),
    (dict(eta=0.5, scheduler="euler"), "eta: 0.5 has no effect with scheduler euler"),
])
def test_bad_workflow_inputs_are_refused_naming_the_field(client, overrides, fragment):
    image, mask = scene(48, 32, seed=12)
    with pytest.raises(InvalidRequestError, match=fragment):
        client.inpaint(image=image, mask_image=mask, **dict(EDIT, **overrides))


@pytest.mark.parametrize("mask_value,overrides,fragment", [
    (255, dict(task="replace_background"), "mask_image: is white everywhere, and with task replace_background"),
    (255, dict(invert_mask=True), "mask_image: is white everywhere, and with invert_mask"),
    (0, dict(task="remove"), "mask_image: has no pixel to repaint"),
    (0, dict(mask_grow=5), "mask_image: has no pixel to repaint"),
], ids=["white-background", "white-invert", "black-remove", "black-grow"])
def test_a_mask_that_leaves_nothing_to_repaint_is_refused_naming_why(client, mask_value, overrides, fragment):
    image, _ = scene(48, 32, seed=15)
    with pytest.raises(InvalidRequestError, match=fragment):
        client.inpaint(image=image, mask_image=Image.new("L", (48, 32), mask_value), **dict(EDIT, **overrides))


@pytest.mark.parametrize("name,value,datatype", [
    (wire.NUM_IMAGES.name, np.float32(2.5), "FP32"), (wire.INVERT_MASK.name, np.int32(1), "INT32"),
    (wire.TASK.name, np.int32(3), "INT32"),
])
def test_a_wrong_type_is_refused_naming_the_field(server, client, name, value, datatype):
    from tritonclient.utils import InferenceServerException

    image, mask = scene(32, 32)
    with grpcclient.InferenceServerClient(server.address.grpc) as raw:
        inputs = []
        for field, item, kind in ((wire.IMAGE.name, png_bytes(image), "BYTES"),
                                  (wire.MASK_IMAGE.name, png_bytes(mask), "BYTES"),
                                  (wire.PROMPT.name, b"x", "BYTES"), (name, value, datatype)):
            tensor = grpcclient.InferInput(field, [1], kind)
            tensor.set_data_from_numpy(np.array([item], dtype=np.object_ if kind == "BYTES" else type(item)))
            inputs.append(tensor)
        with pytest.raises(InferenceServerException) as caught:
            raw.infer(wire.MODEL_NAME, inputs)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and name in caught.value.message()
    assert client.inpaint(image=image, mask_image=mask, prompt="x", num_inference_steps=1).image.size == (32, 32)


def test_eta_is_ddims_eta_as_diffusers_applies_it(client, tiny_pipeline):
    image, mask = scene(48, 32, seed=13)
    served = np.asarray(client.inpaint(image=image, mask_image=mask, scheduler="ddim", eta=0.7, **EDIT).image)
    reference = diffusers_inpaint(tiny_pipeline, image, mask, scheduler="ddim", eta=0.7, **EDIT)
    without = diffusers_inpaint(tiny_pipeline, image, mask, scheduler="ddim", **EDIT)
    inside = np.asarray(mask) >= 128
    assert psnr(served[inside], reference[inside]) >= 40
    assert psnr(served[inside], without[inside]) < 40  # eta changes the result
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])  # outside the mask: as sent


def test_server_info_says_what_the_server_applies(client, server, tiny_pipeline):
    from smartedit.diffusion.spec import PipelineInfo

    info = client.server_info()
    assert info.working_resolution == PipelineInfo.from_pipeline(tiny_pipeline).working_resolution
    assert info.family == "sd-inpaint" and info.model and len(info.weights_sha256) == 64
    assert set(info.tasks) == {"inpaint", "remove", "replace_background"} and "euler" in info.samplers
    assert info.parameters["scheduler"].choices == info.samplers
    assert (info.parameters["num_images"].minimum, info.parameters["num_images"].maximum) == (1, 8)
    assert info.parameters["prompt"].required and info.task_defaults["remove"]["mask_grow"] == 8
    # The defaults it names, and the ones an edit gets, are those the README's contract table documents
    # (written out here: the answer and the edit both come from default_values(), so comparing them with
    # each other would pass with any defaults). Steps: the test repository's config, the README's 50.
    documented = {"num_inference_steps": 50, "guidance_scale": 7.5, "strength": 1.0, "scheduler": "ddim",
                  "crop_padding": 32, "task": "inpaint", "eta": 0.0, "mask_grow": 0, "mask_blur": 0,
                  "invert_mask": False, "num_images": 1, "negative_prompt": ""}
    assert {name: info.parameters[name].default for name in documented} == documented
    image, mask = scene(48, 32, seed=14)
    carried = client.inpaint(image=image, mask_image=mask, prompt="x", num_inference_steps=2).parameters["parameters"]
    assert {name: carried[name] for name in documented} == dict(documented, num_inference_steps=2)
    printed = subprocess.run([sys.executable, "-m", "smartedit_client.cli", "--url", server.address.grpc, "--info"],
                             capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert "tasks: inpaint, remove, replace_background" in printed.stdout
    assert "num_images (INT32) [1..8] default 1" in printed.stdout
