"""Stable Diffusion 1.x/2.x inpainting checkpoints: a UNet of 9 input channels (latents, the latent mask
and the masked image's latents), as diffusers' ``StableDiffusionInpaintPipeline`` runs it."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from diffusers.utils.torch_utils import randn_tensor

from smartedit.diffusion.denoise import (
    DenoiseState, EditInputs, EncodeFn, guidance_rows, sample_latents, schedule,
)
from smartedit.diffusion.prompts import SD_PROMPTS
from smartedit.diffusion.recognize import SD_INPAINT
from smartedit.diffusion.samplers import step_kwargs
from smartedit.diffusion.spec import SD_COMPONENTS, SD_WEIGHTS, PipelineInfo
from smartedit.edit.parameters import EditParameters
from smartedit.edit.tasks import INPAINTING_TASKS

FAMILY = SD_INPAINT
# The models it serves besides the steps (their ONNX graphs: smartedit.export.onnx_export.GRAPHS), and the
# pipeline's modules whose weights they hold (what provenance hashes).
COMPONENTS = SD_COMPONENTS
WEIGHTS = SD_WEIGHTS
# How its prompts become embeddings: one CLIP tokenizer and text model.
PROMPTS = SD_PROMPTS
# Its defaults where they differ from the contract's (which are SD's), and the parameters only it takes: none.
DEFAULTS: dict = {}
OWN_PARAMETERS: tuple[str, ...] = ()
# The tasks it serves: those of a UNet that repaints a mask.
TASKS = INPAINTING_TASKS
# Whether its VAE is kept in FP32 on the FP16 profiles when the VAE's config says ``force_upcast`` (diffusers'
# SD pipelines never upcast: SD's VAE runs in FP16).
UPCASTS_VAE = False


def encodes_init_image(params: EditParameters) -> bool:
    """The photo's latents start the loop only when it does not start from pure noise."""
    return params.strength < 1.0


def start(info: PipelineInfo, scheduler_config: Mapping[str, Any], params: EditParameters, inputs: EditInputs,
          encode_init_image: EncodeFn) -> DenoiseState:
    """Stages 4-9 of diffusers' ``__call__``, drawing random numbers in the same order."""
    generator = torch.Generator().manual_seed(params.seed)
    prompt_embeds = inputs.prompt["prompt_embeds"]
    scheduler, timesteps = schedule(params, scheduler_config)
    is_strength_max = params.strength == 1.0
    # 6. prepare latents: pure noise at strength 1, else the init image noised to the first step
    shape = inputs.masked_image_mean.shape
    if not is_strength_max:
        init_mean, init_std = encode_init_image()
        image_latents = sample_latents(init_mean, init_std, generator, info.vae_scaling_factor)
    noise = randn_tensor(shape, generator=generator, dtype=prompt_embeds.dtype)
    if is_strength_max:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(image_latents, noise, timesteps[:1])
    # 7. masked image latents, sampled from the same generator after the noise
    masked_image_latents = sample_latents(inputs.masked_image_mean, inputs.masked_image_std, generator,
                                          info.vae_scaling_factor)
    conditioning = torch.cat([inputs.latent_mask.to(latents.dtype), masked_image_latents], dim=1)
    rows = guidance_rows(params)
    # 9. extra step kwargs
    return DenoiseState(
        scheduler=scheduler,
        timesteps=timesteps,
        latents=latents,
        conditioning=conditioning.repeat(rows, 1, 1, 1),
        row_inputs={"encoder_hidden_states": prompt_embeds[2 - rows:]},
        guidance_scale=params.guidance_scale,
        generator=generator,
        extra_step_kwargs=step_kwargs(scheduler, generator, params.eta),
    )
