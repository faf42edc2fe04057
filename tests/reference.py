"""The reference: diffusers' own StableDiffusionInpaintPipeline, computed in the test, never stored."""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import (
    DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
    HeunDiscreteScheduler, LCMScheduler, PNDMScheduler, TCDScheduler, UniPCMultistepScheduler,
)
from PIL import Image

# The diffusers class each sampler name stands for, written here rather than taken from the project's
# own map (smartedit.diffusion.samplers.SAMPLERS): a wrong entry there must show as a mismatch, not on both sides.
SCHEDULERS = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,
    "unipc": UniPCMultistepScheduler,
    "heun": HeunDiscreteScheduler,
    "lcm": LCMScheduler,
    "tcd": TCDScheduler,
}


def diffusers_inpaint(pipeline, image: Image.Image, mask: Image.Image, *, prompt: str, negative_prompt: str | None,
                      num_inference_steps: int, guidance_scale: float, seed: int, scheduler: str,
                      strength: float = 1.0, eta: float = 0.0) -> np.ndarray:
    """``pipeline``'s own class on the same weights with the sampler ``scheduler``; ``from_pipe`` keeps the
    pipeline's config (SDXL's force_zeros_for_empty_prompt, requires_aesthetics_score)."""
    reference = type(pipeline).from_pipe(pipeline,
                                         scheduler=SCHEDULERS[scheduler].from_config(pipeline.scheduler.config))
    reference.set_progress_bar_config(disable=True)
    result = reference(
        prompt=prompt, negative_prompt=negative_prompt, image=image, mask_image=mask,
        height=image.size[1], width=image.size[0], num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale, strength=strength, eta=eta, generator=torch.Generator().manual_seed(seed),
    ).images[0]
    return np.asarray(result)


def diffusers_controlnet_inpaint(pipeline, controlnet, image: Image.Image, mask: Image.Image, control_image: np.ndarray,
                                 *, prompt: str, negative_prompt: str | None, num_inference_steps: int,
                                 guidance_scale: float, seed: int, scheduler: str, strength: float = 1.0,
                                 eta: float = 0.0, **control) -> np.ndarray:
    """diffusers' ``StableDiffusionControlNetInpaintPipeline`` (``StableDiffusionXLControlNetInpaintPipeline`` for an
    SDXL ``pipeline``) on ``pipeline``'s weights and ``controlnet``, given
    ``control_image`` as the ControlNet takes it (``[1, 3, H, W]``, [0, 1]; -1 = masked) and ``control``: its
    ``controlnet_conditioning_scale``, ``control_guidance_start``/``end``, ``guess_mode``."""
    from diffusers import StableDiffusionControlNetInpaintPipeline, StableDiffusionXLControlNetInpaintPipeline

    sampler = SCHEDULERS[scheduler].from_config(pipeline.scheduler.config)
    if getattr(pipeline, "text_encoder_2", None) is not None:  # SDXL's, keeping the pipeline's config
        reference = StableDiffusionXLControlNetInpaintPipeline.from_pipe(pipeline, controlnet=controlnet,
                                                                         scheduler=sampler, add_watermarker=False)
    else:
        reference = StableDiffusionControlNetInpaintPipeline(**{**pipeline.components, "scheduler": sampler},
                                                             controlnet=controlnet)
    reference.set_progress_bar_config(disable=True)
    result = reference(
        prompt=prompt, negative_prompt=negative_prompt, image=image, mask_image=mask,
        control_image=torch.from_numpy(control_image), height=image.size[1], width=image.size[0],
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, strength=strength, eta=eta,
        generator=torch.Generator().manual_seed(seed), **control,
    ).images[0]
    return np.asarray(result)


def diffusers_instruct(pipeline, image: Image.Image, *, prompt: str, negative_prompt: str | None,
                       num_inference_steps: int, guidance_scale: float, image_guidance_scale: float, seed: int,
                       scheduler: str, eta: float = 0.0) -> np.ndarray:
    """diffusers' ``StableDiffusionInstructPix2PixPipeline`` on ``pipeline``'s weights with the sampler
    ``scheduler``, editing the whole of ``image``."""
    reference = type(pipeline).from_pipe(pipeline,
                                         scheduler=SCHEDULERS[scheduler].from_config(pipeline.scheduler.config))
    reference.set_progress_bar_config(disable=True)
    result = reference(
        prompt=prompt, negative_prompt=negative_prompt, image=image, num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale, eta=eta,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]
    return np.asarray(result)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def diffedit_reference(pipeline):
    """diffusers' ``StableDiffusionDiffEditPipeline`` on ``pipeline``'s weights (a 4-channel SD pipeline), DDIM both
    ways, as diffusers' DiffEdit documentation builds it."""
    from diffusers import DDIMInverseScheduler, StableDiffusionDiffEditPipeline

    reference = StableDiffusionDiffEditPipeline(
        vae=pipeline.vae, text_encoder=pipeline.text_encoder, tokenizer=pipeline.tokenizer, unet=pipeline.unet,
        scheduler=DDIMScheduler.from_config(pipeline.scheduler.config),
        inverse_scheduler=DDIMInverseScheduler.from_config(pipeline.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    return reference


def diffusers_inversion(pipeline, image: Image.Image, *, source_prompt: str, num_inference_steps: int,
                        strength: float, generator: torch.Generator) -> torch.Tensor:
    """DiffEdit's ``invert``: the photo's latents (drawn from ``generator``) run back with ``DDIMInverseScheduler``
    under ``source_prompt`` without guidance (``guidance_scale=1``, no regularization steps): ``[1, steps, C, h,
    w]``, the most inverted first."""
    return diffedit_reference(pipeline).invert(
        prompt=source_prompt, image=image, num_inference_steps=num_inference_steps, inpaint_strength=strength,
        guidance_scale=1.0, num_reg_steps=0, generator=generator).latents


def diffusers_text_edit(pipeline, image: Image.Image, latent_mask: torch.Tensor | None, *, prompt: str,
                        source_prompt: str, negative_prompt: str | None, num_inference_steps: int,
                        guidance_scale: float, strength: float, seed: int, eta: float = 0.0) -> np.ndarray:
    """A text edit from diffusers' pieces: DiffEdit's inversion, then DiffEdit's ``__call__`` given those latents and
    ``latent_mask`` ([1, 1, h, w], 1 = edit; None: the whole photo); one generator through both, as a caller would."""
    generator = torch.Generator().manual_seed(seed)
    inverted = diffusers_inversion(pipeline, image, source_prompt=source_prompt,
                                   num_inference_steps=num_inference_steps, strength=strength, generator=generator)
    if latent_mask is None:
        latent_mask = torch.ones((1, 1) + tuple(inverted.shape[-2:]))
    result = diffedit_reference(pipeline)(
        prompt=prompt, negative_prompt=negative_prompt, mask_image=latent_mask, image_latents=inverted,
        inpaint_strength=strength, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
        generator=generator).images[0]
    return np.asarray(result)


def diffusers_sdxl_text_edit(pipeline, image: Image.Image, latent_mask: torch.Tensor | None, *, prompt: str,
                             source_prompt: str, negative_prompt: str | None, num_inference_steps: int,
                             guidance_scale: float, strength: float, seed: int) -> np.ndarray:
    """A text edit on an SDXL pipeline from diffusers' own pieces, as DiffEdit runs one on SD (diffusers has no
    DiffEdit for SDXL): ``StableDiffusionXLPipeline``'s ``encode_prompt`` and ``_get_add_time_ids``, the photo's
    latents drawn from the generator, ``DDIMInverseScheduler`` steps under the source prompt without guidance, then
    ``DDIMScheduler`` steps under guidance, the inversion's latents kept outside ``latent_mask`` after each."""
    from diffusers import DDIMInverseScheduler, StableDiffusionXLPipeline

    xl = StableDiffusionXLPipeline.from_pipe(pipeline)
    generator = torch.Generator().manual_seed(seed)
    width, height = image.size
    with torch.inference_mode():
        latents = xl.vae.encode(xl.image_processor.preprocess(image)).latent_dist.sample(generator)
        latents = latents * xl.vae.config.scaling_factor
        source, _, source_pooled, _ = xl.encode_prompt(source_prompt, do_classifier_free_guidance=False)
        text, negative, pooled, negative_pooled = xl.encode_prompt(prompt, negative_prompt=negative_prompt,
                                                                   do_classifier_free_guidance=True)
        time_ids = xl._get_add_time_ids((height, width), (0, 0), (height, width), dtype=text.dtype,
                                        text_encoder_projection_dim=xl.text_encoder_2.config.projection_dim)
        inverse = DDIMInverseScheduler.from_config(xl.scheduler.config)
        inverse.set_timesteps(num_inference_steps)
        skipped = num_inference_steps - int(num_inference_steps * strength)
        trajectory = []
        for t in inverse.timesteps[:len(inverse.timesteps) - skipped]:
            noise = xl.unet(inverse.scale_model_input(latents, t), t, encoder_hidden_states=source,
                            added_cond_kwargs={"text_embeds": source_pooled, "time_ids": time_ids}).sample
            latents = inverse.step(noise, t, latents).prev_sample
            trajectory.append(latents)
        forward = DDIMScheduler.from_config(xl.scheduler.config)
        forward.set_timesteps(num_inference_steps)
        guided = guidance_scale > 1.0
        embeds = torch.cat([negative, text]) if guided else text
        added = {"text_embeds": torch.cat([negative_pooled, pooled]) if guided else pooled,
                 "time_ids": torch.cat([time_ids] * (2 if guided else 1))}
        for index, t in enumerate(forward.timesteps[skipped:]):
            rows = torch.cat([latents] * 2) if guided else latents
            noise = xl.unet(forward.scale_model_input(rows, t), t, encoder_hidden_states=embeds,
                            added_cond_kwargs=added).sample
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            latents = forward.step(noise, t, latents).prev_sample
            if latent_mask is not None:
                latents = latents * latent_mask + trajectory[len(trajectory) - 1 - index] * (1 - latent_mask)
        decoded = xl.vae.decode(latents / xl.vae.config.scaling_factor).sample
    return np.asarray(xl.image_processor.postprocess(decoded, output_type="pil")[0])


def diffusers_inpaint_resumed(pipeline, image: Image.Image, mask: Image.Image, *, step: int, checkpoint: Image.Image,
                              painted: Image.Image, prompt: str, negative_prompt: str | None, num_inference_steps: int,
                              guidance_scale: float, seed: int, scheduler: str) -> np.ndarray:
    """``diffusers_inpaint``, its latents moved after ``step`` steps by the change from ``checkpoint`` to
    ``painted`` (a callback on diffusers' own loop): ``z_t + add_noise(E(painted) - E(checkpoint), 0, t)``, E the
    VAE's latent mean, scaled; t the step's next timestep (``sqrt(alpha_bar_t)`` for DDIM)."""
    reference = type(pipeline).from_pipe(pipeline,
                                         scheduler=SCHEDULERS[scheduler].from_config(pipeline.scheduler.config))
    reference.set_progress_bar_config(disable=True)

    def encoded(picture: Image.Image) -> torch.Tensor:
        with torch.inference_mode():
            pixels = reference.image_processor.preprocess(picture.convert("RGB"))
            return reference.vae.encode(pixels).latent_dist.mean * reference.vae.config.scaling_factor

    delta = encoded(painted) - encoded(checkpoint)

    def move(pipe, index, timestep, tensors):
        if index + 1 != step:
            return tensors
        t = pipe.scheduler.timesteps[step:step + 1]
        return {"latents": tensors["latents"] + pipe.scheduler.add_noise(delta, torch.zeros_like(delta), t)}

    result = reference(
        prompt=prompt, negative_prompt=negative_prompt, image=image, mask_image=mask, height=image.size[1],
        width=image.size[0], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed), callback_on_step_end=move,
        callback_on_step_end_tensor_inputs=["latents"]).images[0]
    return np.asarray(result)
