"""The loop (smartedit.diffusion.denoise) against diffusers, with the PyTorch modules: no server involved.

This pins the loop's arithmetic and random-number order; the functional tests pin the same through
Triton and ONNX.
"""

import numpy as np
import pytest
import torch

from conftest import png_bytes, scene
from reference import diffusers_inpaint, diffusers_text_edit, psnr
from smartedit.diffusion.denoise import EditInputs, decoder_input, run_to_end
from smartedit.diffusion.families import start_denoising
from smartedit.edit.parameters import EditParameters
from smartedit.edit.postprocessing import compose, to_pixels
from smartedit.diffusion.prompts import SD_PROMPTS
from smartedit.edit.preprocessing import prepare_images
from smartedit.serving.settings import PreprocessSettings
from smartedit.diffusion.spec import PipelineInfo


def _loop_with_torch(pipe, image, mask, sampler, strength, guidance, steps=4, seed=7, eta=0.0):
    info = PipelineInfo.from_pipeline(pipe)
    prepared = prepare_images(png_bytes(image), png_bytes(mask), info, PreprocessSettings())
    ids = torch.from_numpy(SD_PROMPTS.tokenize([pipe.tokenizer], "ugly", "a red chair")["input_ids"])
    with torch.inference_mode():
        embeds = pipe.text_encoder(ids)[0]
        masked = pipe.vae.encode(torch.from_numpy(prepared.masked_image)).latent_dist

        def encode_init():
            dist = pipe.vae.encode(torch.from_numpy(prepared.init_image)).latent_dist
            return dist.mean, dist.std

        params = EditParameters(prompt="a red chair", negative_prompt="ugly", scheduler=sampler,
                                num_inference_steps=steps, strength=strength, guidance_scale=guidance, seed=seed,
                                eta=eta)
        inputs = EditInputs({"prompt_embeds": embeds}, masked.mean, masked.std, torch.from_numpy(prepared.latent_mask))
        state = start_denoising(info, pipe.scheduler.config, params, inputs, encode_init)
        assert run_to_end(state, lambda inputs: pipe.unet(**inputs).sample)
        decoded = pipe.vae.decode(decoder_input(state, info)).sample.numpy()
    return (compose(to_pixels(decoded), prepared.original_image, prepared.repaint_mask, prepared.region.box),
            prepared.repaint_mask)


def _assert_loop_matches_diffusers(pipe, sampler, strength, guidance, steps=4, eta=0.0):
    """The loop's edit against diffusers' pipeline on the same weights: >= 40 dB inside, exact outside."""
    image, mask = scene(40, 24)
    ours, inside = _loop_with_torch(pipe, image, mask, sampler, strength, guidance, steps=steps, eta=eta)
    reference = diffusers_inpaint(pipe, image, mask, prompt="a red chair", negative_prompt="ugly",
                                  num_inference_steps=steps, guidance_scale=guidance, seed=7, scheduler=sampler,
                                  strength=strength, eta=eta)
    assert psnr(ours[inside], reference[inside]) >= 40
    assert np.array_equal(ours[~inside], np.asarray(image)[~inside])


@pytest.mark.parametrize("sampler,strength,guidance", [
    ("ddim", 1.0, 7.5), ("euler", 1.0, 7.5), ("ddim", 0.6, 5.0), ("euler_ancestral", 1.0, 1.0),
    ("dpmpp_2m", 0.75, 7.5),
])
def test_loop_matches_diffusers(tiny_pipeline, sampler, strength, guidance):
    _assert_loop_matches_diffusers(tiny_pipeline, sampler, strength, guidance)


# The consistency samplers at the step counts they are made for; TCD's gamma (eta) at 0 and at its authors' 0.3
# (stochastic: it draws from the edit's generator, in diffusers' order).
@pytest.mark.parametrize("sampler,steps,strength,guidance,eta", [
    ("lcm", 4, 1.0, 1.0, 0.0), ("lcm", 8, 1.0, 2.0, 0.0), ("lcm", 8, 0.75, 1.0, 0.0),
    ("tcd", 4, 1.0, 1.0, 0.3), ("tcd", 8, 1.0, 2.0, 0.0), ("tcd", 8, 0.75, 1.0, 0.3),
])
def test_few_step_samplers_match_diffusers(tiny_pipeline, tiny_text_to_image_pipeline, sampler, steps, strength,
                                           guidance, eta):
    for pipe in (tiny_pipeline, tiny_text_to_image_pipeline):  # the 9-channel UNet and latent blending
        _assert_loop_matches_diffusers(pipe, sampler, strength, guidance, steps=steps, eta=eta)


@pytest.mark.parametrize("sampler", ["lcm", "tcd"])
def test_few_step_samplers_refuse_more_steps_than_their_distillation_by_name(tiny_pipeline, sampler):
    from smartedit.diffusion.denoise import schedule
    from smartedit.errors import RequestError

    config = tiny_pipeline.scheduler.config
    assert len(schedule(EditParameters(prompt="", scheduler=sampler, num_inference_steps=50), config)[1]) == 50
    with pytest.raises(RequestError, match="num_inference_steps: 51 is more than scheduler") as refused:
        schedule(EditParameters(prompt="", scheduler=sampler, num_inference_steps=51), config)
    assert refused.value.field == "num_inference_steps"


@pytest.mark.parametrize("sampler,strength,guidance", [
    ("ddim", 1.0, 7.5), ("euler", 1.0, 7.5), ("dpmpp_2m", 1.0, 7.5), ("ddim", 0.6, 5.0), ("euler", 0.6, 7.5),
    ("dpmpp_2m", 0.6, 7.5), ("euler_ancestral", 1.0, 1.0),
])
def test_latent_blending_loop_matches_diffusers_on_a_4_channel_unet(tiny_text_to_image_pipeline, sampler, strength,
                                                                    guidance):
    pipe = tiny_text_to_image_pipeline
    assert pipe.unet.config.in_channels == 4 and PipelineInfo.from_pipeline(pipe).family == "sd-latent-blend"
    _assert_loop_matches_diffusers(pipe, sampler, strength, guidance)


def _text_edit_with_torch(pipe, image, mask, params):
    """A text edit's loop (inversion, then denoising) on the PyTorch modules: (the edit composed into the photo,
    the repainted area, the latent mask the loop saw)."""
    info = PipelineInfo.from_pipeline(pipe)
    prepared = prepare_images(png_bytes(image), None if mask is None else png_bytes(mask), info,
                              PreprocessSettings(), params)
    ids = SD_PROMPTS.tokenize([pipe.tokenizer], params.negative_prompt, params.prompt, params.source_prompt)
    latent_mask = torch.from_numpy(prepared.latent_mask)
    with torch.inference_mode():
        embeds = pipe.text_encoder(torch.from_numpy(ids["input_ids"]))[0]
        init = pipe.vae.encode(torch.from_numpy(prepared.init_image)).latent_dist
        unused = torch.full((1, 4) + tuple(latent_mask.shape[-2:]), float("nan"))  # the masked image: not read
        inputs = EditInputs({"prompt_embeds": embeds}, unused, unused, latent_mask)
        state = start_denoising(info, pipe.scheduler.config, params, inputs, lambda: (init.mean, init.std))
        rows = []
        assert run_to_end(state, lambda inputs: rows.append(inputs["sample"].shape[0]) or pipe.unet(**inputs).sample)
        decoded = pipe.vae.decode(decoder_input(state, info)).sample.numpy()
    steps = params.denoising_steps
    assert rows == [1] * steps + [2 if params.guidance_scale > 1 else 1] * steps  # inversion: the source prompt alone
    edited = compose(to_pixels(decoded), prepared.original_image, prepared.repaint_mask, prepared.region.box)
    return edited, prepared.repaint_mask, latent_mask


@pytest.mark.parametrize("masked", [False, True], ids=["whole-photo", "masked"])
@pytest.mark.parametrize("strength,guidance,eta", [(1.0, 7.5, 0.0), (0.6, 5.0, 0.0), (1.0, 1.0, 0.5)])
def test_a_text_edit_loop_matches_diffedit_s_inversion_and_denoising(tiny_text_to_image_pipeline, masked, strength,
                                                                     guidance, eta):
    """DDIM inversion under the source prompt, then DDIM under the prompt from the inverted latents; with a mask,
    outside it the inversion's trajectory: diffusers' DiffEdit ``invert`` then ``__call__`` on the same weights."""
    pipe = tiny_text_to_image_pipeline
    image, mask = scene(64, 48, seed=4)
    params = EditParameters(task="text_edit", prompt="a red chair", source_prompt="a photo of a room",
                            negative_prompt="ugly", num_inference_steps=5, strength=strength, guidance_scale=guidance,
                            eta=eta, seed=7)
    ours, inside, latent_mask = _text_edit_with_torch(pipe, image, mask if masked else None, params)
    edit = dict(prompt="a red chair", negative_prompt="ugly", num_inference_steps=5, guidance_scale=guidance,
                strength=strength, seed=7, eta=eta)
    reference = diffusers_text_edit(pipe, image, latent_mask if masked else None, source_prompt="a photo of a room",
                                    **edit)
    assert psnr(ours[inside], reference[inside]) >= 40
    assert np.array_equal(ours[~inside], np.asarray(image)[~inside])
    assert inside.all() != masked
    # The inversion's prompt counts: inverted under another, the edit differs.
    other = diffusers_text_edit(pipe, image, latent_mask if masked else None, source_prompt="a dog", **edit)
    assert psnr(ours[inside], other[inside]) < 40


@pytest.mark.parametrize("steps,strength", [(10, 1.0), (7, 0.6), (990, 1.0)])
def test_inverting_then_denoising_under_one_prompt_gives_back_the_photo_s_latents_where_ddim_inverts_exactly(
        tiny_text_to_image_pipeline, steps, strength):
    """DDIM inversion is exact when the UNet's prediction does not change along the path (here a constant): the
    inversion's timesteps must then mirror the denoising's one for one, at any length the server accepts."""
    pipe = tiny_text_to_image_pipeline
    info = PipelineInfo.from_pipeline(pipe)
    generator = torch.Generator().manual_seed(3)
    mean, std = torch.randn(1, 4, 6, 8, generator=generator), torch.zeros(1, 4, 6, 8)  # std 0: the latents are known
    params = EditParameters(task="text_edit", prompt="", num_inference_steps=steps, strength=strength,
                            guidance_scale=1.0, seed=0)
    inputs = EditInputs({"prompt_embeds": torch.zeros(3, 77, 32)}, mean, std, torch.ones(1, 1, 6, 8))
    state = start_denoising(info, pipe.scheduler.config, params, inputs, lambda: (mean, std))
    epsilon = torch.randn(1, 4, 6, 8, generator=generator)
    assert run_to_end(state, lambda inputs: epsilon)
    assert state.total_steps == 2 * params.denoising_steps
    assert torch.allclose(state.latents, mean * info.vae_scaling_factor, atol=1e-4)


def test_cancellation_stops_between_steps(tiny_pipeline):
    info = PipelineInfo.from_pipeline(tiny_pipeline)
    latent = torch.zeros(1, 4, 4, 4)
    params = EditParameters(prompt="", num_inference_steps=10, seed=0)
    inputs = EditInputs({"prompt_embeds": torch.zeros(2, 77, 32)}, latent, latent, torch.ones(1, 1, 4, 4))
    state = start_denoising(info, tiny_pipeline.scheduler.config, params, inputs, lambda: None)
    calls = []
    finished = run_to_end(state, lambda inputs: torch.zeros(inputs["sample"].shape[0], 4, 4, 4),
                          should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert not finished and state.step_index == 3


def test_a_family_s_guide_combines_its_rows_in_place_of_classifier_free_guidance(tiny_pipeline):
    """Three rows (as InstructPix2Pix has: text + image, image, neither) combined by the family's own rule:
    the scheduler steps with what ``guide`` returns, not with a two-row guidance."""
    info = PipelineInfo.from_pipeline(tiny_pipeline)
    latent = torch.zeros(1, 4, 4, 4)
    params = EditParameters(prompt="", num_inference_steps=4, seed=0, scheduler="euler")
    inputs = EditInputs({"prompt_embeds": torch.zeros(2, 77, 32)}, latent, latent, torch.ones(1, 1, 4, 4))

    def started(rows=None, guide=None):
        state = start_denoising(info, tiny_pipeline.scheduler.config, params, inputs, lambda: None)
        if rows:
            state.conditioning = state.conditioning[:1].repeat(rows, 1, 1, 1)
            state.guide = guide
        return state

    seen = []

    def three_rows(state, noise_pred):
        seen.append(noise_pred.shape[0])
        text_image, image, neither = noise_pred.chunk(3)
        return neither + 2.0 * (text_image - image) + 1.5 * (image - neither)

    fixed = [torch.full((1, 4, 4, 4), value) for value in (0.3, 0.1, -0.2)]
    state = started(rows=3, guide=three_rows)
    reference = started()
    assert run_to_end(state, lambda inputs: torch.cat(fixed)[:inputs["sample"].shape[0]])
    reference.guide = lambda state, noise_pred: three_rows(state, torch.cat(fixed))
    assert run_to_end(reference, lambda inputs: torch.zeros(inputs["sample"].shape[0], 4, 4, 4))
    assert seen == [3] * 4 + [3] * 4 and torch.equal(state.latents, reference.latents)
    plain = started()  # the default: two-row classifier-free guidance gives another result
    assert run_to_end(plain, lambda inputs: torch.cat(fixed)[:inputs["sample"].shape[0]])
    assert not torch.equal(plain.latents, state.latents)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_ancestral", "dpmpp_2m", "pndm", "unipc", "heun"])
def test_every_multi_step_sampler_runs_the_most_steps_the_server_accepts(tiny_pipeline, sampler):
    """SD's scheduler config (1000 training timesteps, "leading" spacing, steps_offset 1) at 999 or 1000
    steps makes DDIM and PNDM index past their tables and DPM++ 2M and UniPC return NaN: the server's
    bound stays below that edge."""
    from smartedit.diffusion.samplers import make_scheduler

    config = dict(tiny_pipeline.scheduler.config)
    assert (config["num_train_timesteps"], config["steps_offset"], config["timestep_spacing"]) == (1000, 1, "leading")
    scheduler = make_scheduler(sampler, config)
    scheduler.set_timesteps(PreprocessSettings().max_num_inference_steps)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps[:2]:  # the first steps index the tables at the largest timesteps
        noise_prediction = torch.randn(sample.shape, generator=generator)
        sample = scheduler.step(noise_prediction, timestep, scheduler.scale_model_input(sample, timestep),
                                **({"generator": generator} if sampler == "euler_ancestral" else {})).prev_sample
    assert torch.isfinite(sample).all()
