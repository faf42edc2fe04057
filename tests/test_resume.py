"""The resume-state format and the loop's checkpoints, without a server.

Every sampler resumes from every step exactly (a stand-in UNet that depends on its inputs); the bytes
are parsed only as the format says, and anything that does not hold together is refused naming
``resume_state``.
"""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch

from smartedit.diffusion.denoise import DenoiseState, run_to_end
from smartedit.diffusion.resume import checkpoint, resume
from smartedit.diffusion.resume_state import MAGIC, ResumeState, ResumeStateError
from smartedit.diffusion.samplers import SAMPLERS, make_scheduler, step_kwargs

WEIGHTS = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))


def unet(inputs):
    """Depends on the latents and the timestep, as a UNet does: a wrong restored state shows."""
    sample, timestep = inputs["sample"], inputs["timestep"]
    return torch.einsum("bchw,cd->bdhw", sample, WEIGHTS) * 0.1 + torch.sin(timestep.reshape(-1, 1, 1, 1) / 100)


def start(sampler: str, scheduler_config) -> DenoiseState:
    scheduler = make_scheduler(sampler, scheduler_config)
    scheduler.set_timesteps(8)
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    return DenoiseState(scheduler=scheduler, timesteps=scheduler.timesteps, latents=latents,
                        conditioning=torch.zeros(1, 0, 8, 8), row_inputs={}, guidance_scale=1.0, generator=generator,
                        extra_step_kwargs=step_kwargs(scheduler, generator), track_prediction=True)


@pytest.fixture(scope="module")
def scheduler_config(tiny_model_dir):
    return json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())


def stepped(sampler, scheduler_config, steps) -> DenoiseState:
    state = start(sampler, scheduler_config)
    while state.step_index < steps:
        state.advance(unet(state.unet_inputs()))
    return state


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_resumes_from_every_step_to_the_same_latents(sampler, scheduler_config):
    whole = start(sampler, scheduler_config)
    run_to_end(whole, unet)
    for step in range(1, whole.total_steps):
        saved = checkpoint(stepped(sampler, scheduler_config, step)).to_bytes()
        again = resume(start(sampler, scheduler_config), ResumeState.from_bytes(saved))
        run_to_end(again, unet)
        assert torch.equal(again.latents, whole.latents), f"{sampler}, resumed at step {step}"


def test_a_painted_change_moves_the_latents_by_the_samplers_own_noise_level(scheduler_config):
    saved = checkpoint(stepped("ddim", scheduler_config, 3))
    delta = torch.full((1, 4, 8, 8), 0.5)
    state = resume(start("ddim", scheduler_config), ResumeState.from_bytes(saved.to_bytes()), delta)
    alpha_bar = state.scheduler.alphas_cumprod[int(state.timesteps[3])]
    assert torch.allclose(state.latents, saved.tensors["latents"] + alpha_bar ** 0.5 * delta)


def _state(scheduler_config) -> bytes:
    return checkpoint(stepped("dpmpp_2m", scheduler_config, 2)).to_bytes()


@pytest.mark.parametrize("spoil,fragment", [
    (lambda b: b[:-1], "digest does not match"),
    (lambda b: b[:40], "digest does not match|too short"),
    (lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 1]) + b[len(b) // 2 + 1:], "digest does not match"),
    (lambda b: b"NOT-A-STATE" + b[11:], "does not start with"),
    (lambda b: b"", "too short"),
])
def test_a_spoiled_state_is_refused_before_anything_is_parsed(scheduler_config, spoil, fragment):
    with pytest.raises(ResumeStateError, match=f"resume_state: .*({fragment})"):
        ResumeState.from_bytes(spoil(_state(scheduler_config)))


def _reheadered(raw: bytes, change) -> bytes:
    """A state whose header ``change`` altered, its digest made again: well formed, but not what the server wrote."""
    parsed = ResumeState.from_bytes(raw)
    change(parsed)
    return parsed.to_bytes()


@pytest.mark.parametrize("change,fragment", [
    (lambda s: s.header["scheduler"].update(step={"value": 1}), "'step', which the edit's sampler"),
    (lambda s: s.header["scheduler"].update(__class__={"value": 1}), "'__class__'"),
    (lambda s: s.tensors.update({"latents": torch.zeros(1, 4, 16, 16)}), "its latents are \\(1, 4, 16, 16\\)"),
    (lambda s: s.tensors.update({"scheduler.sigmas": torch.zeros(3)}), "'sigmas' is a \\(3,\\)"),
    (lambda s: s.tensors.update({"generator": torch.zeros(3, dtype=torch.uint8)}), "generator state"),
    (lambda s: s.header.update(step=0), "its step 0"),
    (lambda s: s.header.update(total_steps=3), "edit of 3 steps"),
    (lambda s: s.header["scheduler"].update(model_outputs={"list": [{"list": []}]}), "malformed item"),
])
def test_a_well_formed_state_that_does_not_fit_the_edit_is_refused_by_name(scheduler_config, change, fragment):
    spoiled = _reheadered(_state(scheduler_config), change)
    with pytest.raises(ResumeStateError, match=fragment):
        resume(start("dpmpp_2m", scheduler_config), ResumeState.from_bytes(spoiled))


def test_a_tensor_table_pointing_past_the_payload_is_refused():
    header = json.dumps({"tensors": [{"name": "latents", "dtype": "float32", "shape": [1, 4, 64, 64],
                                      "offset": 0, "nbytes": 65536}]}).encode()
    body = struct.pack("<16sII", MAGIC, 1, len(header)) + header + b"\0" * 16
    with pytest.raises(ResumeStateError, match="does not fit its bytes"):
        ResumeState.from_bytes(body + hashlib.sha256(body).digest())
    body = struct.pack("<16sII", MAGIC, 2, len(header)) + header
    with pytest.raises(ResumeStateError, match="format version 2"):
        ResumeState.from_bytes(body + hashlib.sha256(body).digest())


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "pndm", "unipc"])
def test_a_checkpoint_of_a_sampler_without_its_own_estimate_shows_ddims(sampler, scheduler_config):
    state = stepped(sampler, scheduler_config, 3)
    prediction, sample = state.last_prediction
    alpha_bar = state.scheduler.alphas_cumprod[int(state.timesteps[2])]
    expected = (sample - (1 - alpha_bar) ** 0.5 * prediction) / alpha_bar ** 0.5
    assert state.pred_original is None and torch.allclose(checkpoint(state).tensors["clean_latents"], expected)


def test_a_state_is_tied_to_the_control_image_its_edit_was_sent_and_older_states_resume_without_one():
    """The header's ``photo`` digests name each image; a state written before control images were recorded (no
    ``control_image_sha256``) resumes as one whose edit was sent none."""
    from smartedit.diffusion.spec import PipelineInfo
    from smartedit.edit.provenance import Provenance
    from smartedit.edit.resume_request import check_resumable, checkpoint_header
    from smartedit.errors import RequestError

    info = PipelineInfo(vae_scale_factor=8, latent_channels=4, unet_in_channels=9, text_length=77,
                        text_hidden_size=768, vae_scaling_factor=0.18215, unet_sample_size=64, working_resolution=512)
    provenance = Provenance(model="m", weights_sha256="a" * 64)
    controlled = ResumeState(checkpoint_header(info, provenance, b"photo", b"mask", b"edges"))
    check_resumable(controlled, info, provenance, b"photo", b"mask", b"edges")
    for sent, fragment in ((None, "control_image: is required"), (b"other", "control_image: is not the control_image")):
        with pytest.raises(RequestError, match=fragment):
            check_resumable(controlled, info, provenance, b"photo", b"mask", sent)
    older = ResumeState(checkpoint_header(info, provenance, b"photo", b"mask"))
    del older.header["photo"]["control_image_sha256"]
    check_resumable(older, info, provenance, b"photo", b"mask")
    with pytest.raises(RequestError, match="control_image: is not taken: the checkpoint's edit was sent without one"):
        check_resumable(older, info, provenance, b"photo", b"mask", b"edges")
    with pytest.raises(RequestError, match="mask_image: is required"):
        check_resumable(older, info, provenance, b"photo", None)
