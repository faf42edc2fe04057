"""Any Stable Diffusion 1.x/2.x checkpoint with a 4-channel UNet (the text-to-image ones most people
have), inpainting by latent blending exactly as diffusers' ``StableDiffusionInpaintPipeline`` does with
such a UNet: the UNet sees the latents alone, and after every step the photo's own latents, noised to
the next timestep, are put back outside the mask (the last step puts them back un-noised)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from diffusers.utils.torch_utils import randn_tensor

from smartedit.diffusion.denoise import (
    DenoiseState, EditInputs, EncodeFn, guidance_rows, sample_latents, schedule,
)
from smartedit.diffusion.inversion import start_text_edit
from smartedit.diffusion.prompts import SD_PROMPTS
from smartedit.diffusion.recognize import SD_LATENT_BLEND
from smartedit.diffusion.samplers import step_kwargs
from smartedit.diffusion.spec import SD_COMPONENTS, SD_WEIGHTS, PipelineInfo
from smartedit.edit.parameters import EditParameters
from smartedit.edit.tasks import INPAINTING_TASKS, TEXT_EDIT

FAMILY = SD_LATENT_BLEND
# The models it serves besides the steps (their ONNX graphs: smartedit.export.onnx_export.GRAPHS), and the
# pipeline's modules whose weights they hold (what provenance hashes).
COMPONENTS = SD_COMPONENTS
WEIGHTS = SD_WEIGHTS
# How its prompts become embeddings: one CLIP tokenizer and text model.
PROMPTS = SD_PROMPTS
# Its defaults where they differ from the contract's (which are SD's), and the parameters only it takes: a text
# edit's source prompt.
DEFAULTS: dict = {}
OWN_PARAMETERS: tuple[str, ...] = ("source_prompt",)
# The tasks it serves: those of a UNet that repaints a mask, and text edits by inversion (a UNet that sees the
# latents alone is what DDIM inverts).
TASKS = INPAINTING_TASKS + (TEXT_EDIT,)
# Whether its VAE is kept in FP32 on the FP16 profiles when the VAE's config says ``force_upcast`` (diffusers'
# SD pipelines never upcast: SD's VAE runs in FP16).
UPCASTS_VAE = False


def encodes_init_image(params: EditParameters) -> bool:
    """Always: the photo's latents are what every step keeps outside the mask."""
    return True


@dataclass(frozen=True)
class BlendOutsideMask:
    """The ``keep`` of a latent-blending edit: the photo's latents outside the mask, at the next step's noise."""

    image_latents: torch.Tensor  # [1, C, h, w]
    noise: torch.Tensor  # the noise the latents started from
    mask: torch.Tensor  # [1, 1, h, w], 1 = repaint

    def __call__(self, state: DenoiseState, latents: torch.Tensor) -> torch.Tensor:
        kept = self.image_latents
        index = state.step_index  # the step just taken
        if index < state.total_steps - 1:
            kept = state.scheduler.add_noise(kept, self.noise, torch.tensor([state.timesteps[index + 1]]))
        return (1 - self.mask) * kept + self.mask * latents


def start(info: PipelineInfo, scheduler_config: Mapping[str, Any], params: EditParameters, inputs: EditInputs,
          encode_init_image: EncodeFn) -> DenoiseState:
    """Stages 4-9 of diffusers' ``__call__`` with a 4-channel UNet, drawing random numbers in the same order; a
    text edit's inversion and denoising (smartedit.diffusion.inversion)."""
    prompt_embeds = inputs.prompt["prompt_embeds"]
    if params.task == TEXT_EDIT:
        return start_text_edit(scheduler_config, params, *encode_init_image(), info.vae_scaling_factor,
                               lambda rows: {"encoder_hidden_states": prompt_embeds[list(rows)]}, inputs.latent_mask)
    generator = torch.Generator().manual_seed(params.seed)
    scheduler, timesteps = schedule(params, scheduler_config)
    # 6. prepare latents: the photo's latents first (drawn whatever the strength), then the noise
    init_mean, init_std = encode_init_image()
    image_latents = sample_latents(init_mean, init_std, generator, info.vae_scaling_factor)
    noise = randn_tensor(inputs.masked_image_mean.shape, generator=generator, dtype=prompt_embeds.dtype)
    if params.strength == 1.0:
        latents = noise * scheduler.init_noise_sigma
    else:
        latents = scheduler.add_noise(image_latents, noise, timesteps[:1])
    # 7. diffusers draws the masked image's latents here too, though this UNet never sees them: drawn so
    # that the generator stands where diffusers' does for samplers that draw noise at every step.
    sample_latents(inputs.masked_image_mean, inputs.masked_image_std, generator, info.vae_scaling_factor)
    rows = guidance_rows(params)
    mask = inputs.latent_mask.to(latents.dtype)
    return DenoiseState(
        scheduler=scheduler,
        timesteps=timesteps,
        latents=latents,
        conditioning=latents.new_zeros((rows, 0) + tuple(latents.shape[2:])),
        row_inputs={"encoder_hidden_states": prompt_embeds[2 - rows:]},
        guidance_scale=params.guidance_scale,
        generator=generator,
        extra_step_kwargs=step_kwargs(scheduler, generator, params.eta),
        keep=BlendOutsideMask(image_latents, noise, mask),
    )
