"""The denoising loop of one edit, as diffusers' ``StableDiffusionInpaintPipeline.__call__`` runs it.

All per-request state (scheduler, latents, embeddings, mask, guidance, generator) lives in one
``DenoiseState``, and the UNet is a function the caller supplies. The scheduler model passes a
BLS call; tests pass the PyTorch UNet. Keeping the state in one object is what lets the batched
engine (``smartedit.engine.core``) step many edits together: their ``unet_inputs`` concatenated into
one UNet batch, each edit's rows of the output handed back to its own ``advance``. The UNet's inputs
travel by name (``sample``, ``timestep`` and the family's ``row_inputs``), so that a family whose UNet
takes more (SDXL's ``text_embeds`` and ``time_ids``) needs no change here or in the engine.

Stage numbers in comments are those of diffusers' ``__call__``, so the two read side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from diffusers.utils.torch_utils import randn_tensor

from smartedit.edit.parameters import EditParameters
from smartedit.errors import RequestError
from smartedit.diffusion.samplers import clean_estimate, make_scheduler
from smartedit.diffusion.spec import PipelineInfo

# The UNet's inputs by name ({"sample", "timestep", **row_inputs}) -> noise_pred
UNetFn = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
SAMPLE, TIMESTEP = "sample", "timestep"  # the UNet inputs every family has: what changes at every step
# () -> (latent mean, latent std) of the init image, called when the family needs the image's latents
EncodeFn = Callable[[], tuple[torch.Tensor, torch.Tensor]]
# (state, latents after the scheduler's step) -> the latents kept: how a family keeps what must not change
# (latent blending puts the photo back outside the mask after every step). None: kept as they are.
KeepFn = Callable[["DenoiseState", torch.Tensor], torch.Tensor]
# (state, the UNet's output for its rows) -> the one noise prediction the scheduler steps with: how a family
# combines its rows. None: classifier-free guidance over (negative, positive) rows when guidance_scale > 1
# (InstructPix2Pix, for one, combines three rows with two scales).
GuideFn = Callable[["DenoiseState", torch.Tensor], torch.Tensor]


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator,
                   scaling_factor: float) -> torch.Tensor:
    """``vae.config.scaling_factor * latent_dist.sample(generator)``, as ``_encode_vae_image``."""
    noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return scaling_factor * (mean + std * noise)


def strength_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The timesteps left after skipping the first ``1 - strength`` of the schedule (``get_timesteps``)."""
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps


@dataclass
class DenoiseState:
    """Everything one edit carries between denoising steps."""

    scheduler: Any
    timesteps: torch.Tensor
    latents: torch.Tensor  # [1, C, h, w]
    # What the UNet sees besides the latents, already duplicated for guidance (fixed for the edit), by the
    # family: [rows, 1 + C, h, w] latent mask and masked-image latents for a 9-channel inpainting UNet;
    # [rows, 0, h, w] for a UNet that takes the latents alone.
    conditioning: torch.Tensor
    # The UNet's other inputs, by the name it takes them: one row per UNet row, the same at every step, by
    # the family: {"encoder_hidden_states": [rows, L, D]} (negative, positive prompt) for SD; SDXL's adds
    # its pooled "text_embeds" and "time_ids".
    row_inputs: dict[str, torch.Tensor]
    guidance_scale: float
    generator: torch.Generator
    extra_step_kwargs: dict = field(default_factory=dict)
    step_index: int = 0
    # The scheduler's estimate of the clean latents after the last step, where the sampler gives one
    # (DDIM, Euler, Heun, LCM do; DPM-Solver, PNDM, UniPC, TCD do not): what a cheap preview shows.
    pred_original: torch.Tensor | None = None
    keep: KeepFn | None = None
    guide: GuideFn | None = None
    # With ``track_prediction`` (an edit that takes checkpoints), the last step's guided prediction and the
    # latents it stepped from: what ``clean_latents`` estimates the clean latents from where the sampler
    # gives none. Off otherwise: two more latents per edit, at 4096 px 8 MB.
    track_prediction: bool = False
    last_prediction: tuple[torch.Tensor, torch.Tensor] | None = None
    # The UNet-call inputs that change from step to step besides the latents and the timestep, one row per UNet
    # row (a controlled edit's conditioning scales: smartedit.diffusion.control). None: there are none.
    step_inputs: Callable[["DenoiseState"], dict[str, torch.Tensor]] | None = None

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def rows(self) -> int:
        """UNet batch rows this edit needs per step."""
        return self.conditioning.shape[0]

    @property
    def total_steps(self) -> int:
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.step_index >= self.total_steps

    def model_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled latents ``[1, C, h, w]``, timestep) of this step: what changes from step to step.

        Every row of the edit sees the same scaled latents (the guidance rows differ only in their
        prompt embeddings), so a batch builder may broadcast them instead of concatenating copies.
        """
        t = self.timesteps[self.step_index]
        return self.scheduler.scale_model_input(self.latents, t), t

    def unet_inputs(self) -> dict[str, torch.Tensor]:
        """The UNet's inputs of this step by name, ``rows`` rows each."""
        # 10. expand the latents for classifier-free guidance, scale, concat mask + masked latents
        scaled, t = self.model_input()
        latent_model_input = scaled.expand(self.rows, -1, -1, -1)
        sample = torch.cat([latent_model_input, self.conditioning], dim=1)
        timestep = t.to(torch.float32).reshape(1).expand(self.rows).contiguous()
        stepping = {} if self.step_inputs is None else self.step_inputs(self)
        return {SAMPLE: sample, TIMESTEP: timestep, **self.row_inputs, **stepping}

    def advance(self, noise_pred: torch.Tensor) -> None:
        """Apply guidance to this step's UNet output and take the scheduler step."""
        t = self.timesteps[self.step_index]
        if self.guide is not None:
            noise_pred = self.guide(self, noise_pred)
        elif self.do_classifier_free_guidance:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
        if self.track_prediction:
            self.last_prediction = (noise_pred, self.latents)
        output = self.scheduler.step(noise_pred, t, self.latents, **self.extra_step_kwargs)
        self.latents = output.prev_sample if self.keep is None else self.keep(self, output.prev_sample)
        self.pred_original = clean_estimate(output)
        self.step_index += 1

    def preview_latents(self) -> torch.Tensor:
        """The latents a preview should show: the predicted clean latents, else the current ones."""
        return self.latents if self.pred_original is None else self.pred_original

    def clean_latents(self) -> torch.Tensor:
        """The predicted clean latents after the last step: the sampler's own estimate where it gives one,
        else DDIM's from the last prediction and the noise schedule (the samplers without one, DPM-Solver,
        PNDM, UniPC and TCD, step in that schedule's space)."""
        if self.pred_original is not None or self.last_prediction is None:
            return self.preview_latents()
        prediction, sample = self.last_prediction
        t = int(self.timesteps[self.step_index - 1])
        alpha_prod = self.scheduler.alphas_cumprod[t]
        beta_prod = 1 - alpha_prod
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return (sample - beta_prod ** 0.5 * prediction) / alpha_prod ** 0.5
        if kind == "v_prediction":
            return alpha_prod ** 0.5 * sample - beta_prod ** 0.5 * prediction
        return prediction  # "sample": the prediction is the clean latents


@dataclass(frozen=True)
class EditInputs:
    """The tensors one edit's loop starts from, made by the ensemble's steps before it."""

    # The prompt's embeddings by name, as the family's encoder answers them (its PROMPTS.embeddings), each
    # with two rows, negative then positive: {"prompt_embeds": [2, L, D]} for SD (a text edit's have a third,
    # its source prompt: prompts.SOURCE_ROW).
    prompt: Mapping[str, torch.Tensor]
    masked_image_mean: torch.Tensor  # [1, C, h, w]: the masked image's latent distribution
    masked_image_std: torch.Tensor
    latent_mask: torch.Tensor  # [1, 1, h, w], 1 = repaint
    # A ControlNet's conditioning image at the edit's working size ([1, 3, H, W], the ControlNet's range), when the
    # edit is under control (smartedit.diffusion.control); None otherwise.
    control_image: torch.Tensor | None = None


def schedule(params: EditParameters, scheduler_config: Mapping[str, Any]) -> tuple[Any, torch.Tensor]:
    """Stage 4 of diffusers' ``__call__``: the edit's sampler with its timesteps set, less the part that
    ``strength`` leaves out (the same for every family).

    Raises:
        RequestError: more steps than the sampler takes (LCM and TCD take at most the ``original_inference_steps``
            of their distillation, 50 unless the model's scheduler config says otherwise).
        ValueError: ``strength`` leaves no step to run.
    """
    scheduler = make_scheduler(params.scheduler, scheduler_config)
    try:
        scheduler.set_timesteps(params.num_inference_steps)
    except ValueError as error:
        raise RequestError("num_inference_steps", f"{params.num_inference_steps} is more than scheduler "
                                                  f"{params.scheduler} takes with this model: {error}") from None
    timesteps = strength_timesteps(scheduler, params.num_inference_steps, params.strength)
    if len(timesteps) == 0:
        raise ValueError(f"strength {params.strength} with {params.num_inference_steps} steps leaves no step to run")
    return scheduler, timesteps


def guidance_rows(params: EditParameters) -> int:
    """UNet rows of one image per step: negative and positive prompt under classifier-free guidance."""
    return 2 if params.guidance_scale > 1.0 else 1


def run_to_end(state: DenoiseState, unet: UNetFn, should_stop: Callable[[], bool] = lambda: False) -> bool:
    """Step ``state`` until done; returns False when ``should_stop`` interrupted it."""
    while not state.done:
        if should_stop():
            return False
        state.advance(unet(state.unet_inputs()))
    return True


def decoder_input(state: DenoiseState, info: PipelineInfo) -> torch.Tensor:
    """The latents the VAE decoder takes: unscaled by the VAE's scaling factor."""
    return state.latents / info.vae_scaling_factor
