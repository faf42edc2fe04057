"""Checkpoints and resuming over the real stream (``checkpoint_every``, ``resume_state``, ``resume_image``).

For every sampler, continuing from any checkpoint gives the uninterrupted edit's PNG, byte for byte; a
painted checkpoint changes the inside of the mask and leaves every pixel outside as sent; a state that
was truncated, changed, made by another model or from another photo is refused by name.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import png_bytes, scene
from reference import diffusers_inpaint_resumed, psnr
from smartedit.diffusion.resume_state import ResumeState
from smartedit.diffusion.samplers import SAMPLERS
from smartedit_client import CheckpointEvent, InpaintStream, InvalidRequestError
from smartedit_client import _contract as wire
from smartedit_client._client import _tensor, resume_inputs

pytestmark = pytest.mark.functional

EDIT = dict(prompt="a red chair", negative_prompt="ugly", num_inference_steps=6, guidance_scale=7.5, seed=5)


def photo(seed=3):
    image, mask = scene(64, 64, seed=seed)
    return dict(image=png_bytes(image), mask_image=png_bytes(mask))


def assert_every_checkpoint_resumes(client, image, mask_image=None, every=2, pipeline=None, **edit):
    """Stream ``edit`` with checkpoints; resume from each: the uninterrupted PNG, byte for byte, every time."""
    photo_inputs = dict(image=image, mask_image=mask_image)
    with client.inpaint_stream(**photo_inputs, **edit, checkpoint_every=every, preview_every=0,
                               pipeline=pipeline) as stream:
        list(stream)
    assert stream.result.checkpoints, "no checkpoint came"
    for checkpoint in stream.result.checkpoints:
        resumed = client.resume(checkpoint, **photo_inputs, pipeline=pipeline)
        assert resumed.png == stream.result.png, f"resumed from step {checkpoint.step} of {checkpoint.total_steps}"


def checkpointed(client, every=2, **change):
    """(the uninterrupted result, its checkpoints), from one stream."""
    with client.inpaint_stream(**photo(), **dict(EDIT, **change), checkpoint_every=every, preview_every=0) as stream:
        events = list(stream)
    checkpoints = [event for event in events if isinstance(event, CheckpointEvent)]
    assert checkpoints == list(stream.result.checkpoints)
    return stream.result, checkpoints


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_resuming_from_any_checkpoint_gives_the_uninterrupted_edit_byte_for_byte(client, sampler):
    result, checkpoints = checkpointed(client, scheduler=sampler, eta=0.0)
    total = checkpoints[0].total_steps
    assert [c.step for c in checkpoints] == list(range(2, total, 2))  # every 2nd step, never the last
    assert all(c.image.size == (64, 64) and c.png.startswith(b"\x89PNG") for c in checkpoints)
    for checkpoint in checkpoints:
        resumed = client.resume(checkpoint.resume_state, **photo())
        assert resumed.png == result.png, f"{sampler}: resumed from step {checkpoint.step} of {total}"
    # The checkpoint image itself, sent back unpainted, moves nothing either.
    again = client.resume(checkpoints[0], **photo(), resume_image=checkpoints[0].png)
    assert again.png == result.png


def test_the_unary_edit_and_a_stream_with_checkpoints_give_the_same_png(client):
    result, _ = checkpointed(client, every=1, scheduler="dpmpp_2m")
    assert client.inpaint(**photo(), **dict(EDIT, scheduler="dpmpp_2m")).png == result.png


def _painted(checkpoint: CheckpointEvent) -> Image.Image:
    """The checkpoint image, painted on: a red square and, around it, the colours turned over (the tiny
    model's random VAE carries little of a small change to its output)."""
    pixels = 255 - np.asarray(checkpoint.image.convert("RGB"))
    pixels[20:44, 20:44] = (255, 0, 0)
    return Image.fromarray(pixels)


def test_a_painted_checkpoint_moves_the_edit_as_diffusers_does_inside_the_mask_only(client, tiny_pipeline):
    result, checkpoints = checkpointed(client, every=2, scheduler="ddim")
    checkpoint = checkpoints[0]
    painted = _painted(checkpoint)
    resumed = client.resume(checkpoint.resume_state, **photo(), resume_image=png_bytes(painted))
    image, mask = (Image.open(io.BytesIO(photo()[key])) for key in ("image", "mask_image"))
    inside = np.asarray(mask) >= 128
    served, untouched = np.asarray(resumed.image), np.asarray(result.image)
    assert np.array_equal(served[~inside], np.asarray(image.convert("RGB"))[~inside])  # as sent, byte for byte
    assert not np.array_equal(served[inside], untouched[inside])
    # The same move on diffusers' own loop: the served edit is that one, and closer to it than to the edit
    # that was not painted on.
    reference = diffusers_inpaint_resumed(tiny_pipeline, image, mask, step=checkpoint.step, checkpoint=checkpoint.image,
                                          painted=painted, **{k: v for k, v in EDIT.items()}, scheduler="ddim")
    assert psnr(served[inside], reference[inside]) >= 40
    assert psnr(served[inside], reference[inside]) > psnr(untouched[inside], reference[inside])
    assert resumed.parameters["parameters"] == result.parameters["parameters"]


def test_a_resumed_edit_checkpoints_again_and_those_resume_too(client):
    result, checkpoints = checkpointed(client, every=2, scheduler="unipc")
    with client.resume_stream(checkpoints[0], **photo(), checkpoint_every=1, preview_every=0) as stream:
        later = [event for event in stream if isinstance(event, CheckpointEvent)]
    assert stream.result.png == result.png
    assert [c.step for c in later] == list(range(checkpoints[0].step + 1, later[0].total_steps))
    assert client.resume(later[-1], **photo()).png == result.png


def _refused(client, fragment, state, **change):
    with pytest.raises(InvalidRequestError, match=fragment) as caught:
        client.resume(state, **dict(photo(), **change))
    assert caught.value.status == "INVALID_ARGUMENT"


def test_a_truncated_changed_or_foreign_state_is_refused_by_name(client):
    _, (checkpoint, *_) = checkpointed(client)
    state = checkpoint.resume_state
    changed = bytearray(state)
    changed[len(state) // 2] ^= 0x01
    _refused(client, "resume_state: .*digest does not match", bytes(changed))
    _refused(client, "resume_state: .*digest does not match", state[:-100])
    _refused(client, "resume_state: is 10 bytes: too short", state[:10])
    _refused(client, "resume_state: does not start with 'SMARTEDIT-RESUME'", b"x" * 200)
    # Well formed, but made by other weights: refused naming why (the digest is no signature).
    parsed = ResumeState.from_bytes(state)
    parsed.header["model"] = dict(parsed.header["model"], weights_sha256="f" * 64, model="another-model")
    _refused(client, "resume_state: was made by another model \\('another-model'", parsed.to_bytes())
    # Another photo or mask than the checkpoint's edit was sent with.
    _refused(client, "image: is not the image the checkpoint's edit was sent with", state, image=photo(seed=9)["image"])
    other_mask = np.zeros((64, 64), dtype=np.uint8)
    other_mask[8:40, 8:40] = 255
    _refused(client, "mask_image: is not the mask_image", state, mask_image=png_bytes(Image.fromarray(other_mask)))
    # A header that does not fit the edit: its step past the end.
    parsed = ResumeState.from_bytes(state)
    parsed.header["step"] = 99
    _refused(client, "resume_state: was saved from an edit of|resume_state: its step 99", parsed.to_bytes())
    # The painted image at another size.
    _refused(client, "resume_image: is 32x32; the checkpoint image it paints on is 64x64", state,
             resume_image=png_bytes(Image.new("RGB", (32, 32))))


def test_checkpoint_and_resume_inputs_are_checked_by_name(client):
    def refused(fragment, **edit):
        with pytest.raises(InvalidRequestError, match=fragment):
            list(client.inpaint_stream(**dict(photo(), **EDIT, **edit)))

    refused("checkpoint_every: must be >= 0", checkpoint_every=-1)
    refused("checkpoint_every: 2 needs num_images 1", checkpoint_every=2, num_images=2)
    _, (checkpoint, *_) = checkpointed(client)
    # Parameters come from the state: one sent with it is refused, not silently ignored (the SDK sends
    # none; raw tensors here).
    def sent(*extra, with_state=True):
        inputs = resume_inputs(checkpoint.resume_state, photo()["image"], photo()["mask_image"], None, 0, None)
        inputs = [t for t in inputs if with_state or t.name() != wire.RESUME_STATE.name] + list(extra)
        return InpaintStream(client.url, tls=client._tls, model_name=wire.STREAM_MODEL_NAME, inputs=inputs,
                             request_id="raw", timeout_s=60)

    with pytest.raises(InvalidRequestError, match="prompt: is not taken with resume_state"):
        list(sent(_tensor(wire.PROMPT, "x")))
    with pytest.raises(InvalidRequestError, match="resume_image: is taken only with resume_state"):
        list(sent(_tensor(wire.PROMPT, "x"), _tensor(wire.RESUME_IMAGE, checkpoint.png), with_state=False))


def test_the_cli_writes_checkpoints_and_resumes_from_one(client, server, tmp_path):
    (tmp_path / "photo.png").write_bytes(photo()["image"])
    (tmp_path / "mask.png").write_bytes(photo()["mask_image"])
    common = [sys.executable, "-m", "smartedit_client.cli", "--url", server.address.grpc,
              "--image", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png")]
    first = subprocess.run(common + ["--prompt", "a chair", "--steps", "6", "--seed", "2", "--checkpoints",
                                     str(tmp_path / "checkpoints"), "--checkpoint-every", "3", "--out",
                                     str(tmp_path / "whole.png")], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-0003.png",
                                                                           "checkpoint-0003.state"]
    resumed = subprocess.run(common + ["--resume", str(tmp_path / "checkpoints" / "checkpoint-0003.state"),
                                       "--out", str(tmp_path / "resumed.png")], capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "resumed.png").read_bytes() == (tmp_path / "whole.png").read_bytes()
    refused = subprocess.run(common + ["--resume", str(tmp_path / "checkpoints" / "checkpoint-0003.state"),
                                       "--prompt", "x", "--out", str(tmp_path / "x.png")], capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "--resume takes no parameter" in refused.stderr


def test_the_async_client_checkpoints_and_resumes_too(client, server):
    import asyncio

    from smartedit_client import AsyncInpaintClient

    async def main():
        async with AsyncInpaintClient(server.address.grpc, timeout_s=120) as aio:
            async with aio.inpaint_stream(**photo(), **dict(EDIT, scheduler="pndm"), checkpoint_every=4) as stream:
                async for _ in stream:
                    pass
            checkpoint = stream.result.checkpoints[0]
            return stream.result, await aio.resume(checkpoint, **photo())

    whole, resumed = asyncio.run(main())
    assert resumed.png == whole.png == client.inpaint(**photo(), **dict(EDIT, scheduler="pndm")).png
