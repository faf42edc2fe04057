"""InstructPix2Pix checkpoints: a UNet of 8 input channels (the latents and the photo's own latents), which
edits a photo as an instruction says, as diffusers' ``StableDiffusionInstructPix2PixPipeline`` runs it.

The loop starts from pure noise; the photo is a condition, not a start: its latents (the VAE's mode, not
scaled) sit beside the latents in every row. Under guidance each step has three rows -- the instruction with
the photo, the photo alone, neither -- combined with two scales: ``guidance_scale`` pulls toward the
instruction, ``image_guidance_scale`` toward the photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from diffusers.utils.torch_utils import randn_tensor

from smartedit.diffusion.denoise import DenoiseState, EditInputs, EncodeFn, schedule
from smartedit.diffusion.prompts import SD_PROMPTS
from smartedit.diffusion.recognize import INSTRUCT_PIX2PIX
from smartedit.diffusion.samplers import step_kwargs
from smartedit.diffusion.spec import SD_COMPONENTS, SD_WEIGHTS, PipelineInfo
from smartedit.edit.parameters import EditParameters
from smartedit.edit.tasks import INSTRUCT

FAMILY = INSTRUCT_PIX2PIX
# The models it serves besides the steps: SD's (an 8-channel UNet is exported as any UNet is).
COMPONENTS = SD_COMPONENTS
WEIGHTS = SD_WEIGHTS
# How its prompts become embeddings: one CLIP tokenizer and text model, as SD.
PROMPTS = SD_PROMPTS
# Its defaults where they differ from the contract's: none (its task, instruct, is its only one).
DEFAULTS: dict = {}
# The parameters only it takes: the photo's guidance scale.
OWN_PARAMETERS: tuple[str, ...] = ("image_guidance_scale",)
# The tasks it serves: an instruction edit. Inpainting needs a UNet that sees a mask; this one sees the photo.
TASKS: tuple[str, ...] = (INSTRUCT,)
# diffusers' InstructPix2Pix pipeline never upcasts its VAE.
UPCASTS_VAE = False


def encodes_init_image(params: EditParameters) -> bool:
    """Always: the photo's latents are the UNet's condition at every step."""
    return True


def guided(params: EditParameters) -> bool:
    """diffusers' ``do_classifier_free_guidance`` for this pipeline: both scales must be in force."""
    return params.guidance_scale > 1.0 and params.image_guidance_scale >= 1.0


@dataclass(frozen=True)
class TextAndImageGuidance:
    """The ``guide`` of a guided instruction edit: its three rows (instruction + photo, photo, neither)
    combined into one prediction, as diffusers' pipeline combines them."""

    guidance_scale: float
    image_guidance_scale: float

    def __call__(self, state: DenoiseState, noise_pred: torch.Tensor) -> torch.Tensor:
        text, image, uncond = noise_pred.chunk(3)
        return uncond + self.guidance_scale * (text - image) + self.image_guidance_scale * (image - uncond)


def unguided(state: DenoiseState, noise_pred: torch.Tensor) -> torch.Tensor:
    """The ``guide`` of an edit without guidance: its one row is the prediction (``guidance_scale`` alone
    may be > 1 and must not split it)."""
    return noise_pred


def start(info: PipelineInfo, scheduler_config: Mapping[str, Any], params: EditParameters, inputs: EditInputs,
          encode_init_image: EncodeFn) -> DenoiseState:
    """Stages 2-8 of diffusers' ``__call__``, drawing random numbers in the same order (the photo's latents
    are its distribution's mode: no draw)."""
    generator = torch.Generator().manual_seed(params.seed)
    negative, positive = inputs.prompt["prompt_embeds"].chunk(2)
    # 4. set timesteps: every one (task instruct refuses a strength below 1)
    scheduler, timesteps = schedule(params, scheduler_config)
    # 5. the photo's latents: the mode, unscaled (prepare_image_latents)
    image_latents, _ = encode_init_image()
    # 6. the latents: pure noise
    latents = randn_tensor(image_latents.shape, generator=generator, dtype=positive.dtype) * scheduler.init_noise_sigma
    if guided(params):
        # 2./5. rows: (instruction, photo), (none, photo), (none, no photo)
        prompt_rows = torch.cat([positive, negative, negative])
        conditioning = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
        guide = TextAndImageGuidance(params.guidance_scale, params.image_guidance_scale)
    else:
        prompt_rows, conditioning, guide = positive, image_latents, unguided
    # 8. extra step kwargs
    return DenoiseState(
        scheduler=scheduler,
        timesteps=timesteps,
        latents=latents,
        conditioning=conditioning.to(latents.dtype),
        row_inputs={"encoder_hidden_states": prompt_rows},
        guidance_scale=params.guidance_scale,
        generator=generator,
        extra_step_kwargs=step_kwargs(scheduler, generator, params.eta),
        guide=guide,
    )
