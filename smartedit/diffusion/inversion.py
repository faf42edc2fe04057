"""Text edits by DDIM inversion (task ``text_edit``), for families whose UNet sees the latents alone.

The photo's latents are run backwards with diffusers' ``DDIMInverseScheduler`` under the source prompt (one
row a step: no guidance, the usual DDIM inversion), for ``num_inference_steps x strength`` steps; from where
that ends, DDIM denoises them under the prompt with classifier-free guidance. With a mask, after every
denoising step the latents outside it are put back from the inversion's trajectory at the matching step, as
diffusers' DiffEdit pipeline (``StableDiffusionDiffEditPipeline.invert`` then ``__call__``, given a mask and
``num_reg_steps=0``) does. Both phases are steps of one ``DenoiseState``, so the engine batches an edit's
inversion steps with other edits' steps through the same UNet calls; its rows change at the phase boundary
(one, then two under guidance), and with them the objects its row inputs are held in, which is how the
engine's batch builder knows to copy them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from smartedit.diffusion.denoise import DenoiseState, guidance_rows, sample_latents, schedule
from smartedit.diffusion.prompts import NEGATIVE_ROW, PROMPT_ROW, SOURCE_ROW
from smartedit.diffusion.samplers import step_kwargs
from smartedit.edit.parameters import EditParameters

# (rows of the prompt's embeddings: prompts.NEGATIVE_ROW, ...) -> the UNet's row inputs by name for those rows
RowInputsFn = Callable[[Sequence[int]], dict[str, torch.Tensor]]


def inverse_schedule(params: EditParameters, scheduler_config: Mapping[str, Any]) -> tuple[Any, torch.Tensor]:
    """The inversion's sampler and its timesteps, rising: the first ``num_inference_steps x strength`` of the
    inverse schedule (DiffEdit's ``get_inverse_timesteps``), the denoising timesteps' mirror."""
    from diffusers import DDIMInverseScheduler

    scheduler = DDIMInverseScheduler.from_config(dict(scheduler_config))
    scheduler.set_timesteps(params.num_inference_steps)
    skipped = params.num_inference_steps - params.denoising_steps
    timesteps = scheduler.timesteps[:len(scheduler.timesteps) - skipped]
    return scheduler, timesteps


@dataclass
class _Denoising:
    """What a text edit's state switches to when its inversion ends."""

    scheduler: Any
    row_inputs: dict[str, torch.Tensor]
    conditioning: torch.Tensor
    guidance_scale: float
    extra_step_kwargs: dict
    mask: torch.Tensor | None  # [1, 1, h, w], 1 = edit; None: the whole photo


@dataclass
class InvertThenDenoise(DenoiseState):
    """A text edit's loop: ``inversion_steps`` steps of inversion, then as many of denoising.

    ``timesteps`` holds both phases' (rising, then falling), ``step_index`` counts through both, so progress,
    cancellation and previews see one loop of ``total_steps`` steps.
    """

    inversion_steps: int = 0
    denoising: _Denoising | None = None
    # The latents after each inversion step, kept when a mask needs them (DiffEdit's ``inverted_latents``).
    trajectory: list[torch.Tensor] = field(default_factory=list)

    @property
    def inverting(self) -> bool:
        return self.step_index < self.inversion_steps

    def advance(self, noise_pred: torch.Tensor) -> None:
        inverting = self.inverting
        super().advance(noise_pred)
        if inverting and self.denoising is not None and self.denoising.mask is not None:
            self.trajectory.append(self.latents)
        if self.step_index == self.inversion_steps:
            self._start_denoising()

    def _start_denoising(self) -> None:
        phase = self.denoising
        self.scheduler, self.row_inputs, self.conditioning = phase.scheduler, phase.row_inputs, phase.conditioning
        self.guidance_scale, self.extra_step_kwargs = phase.guidance_scale, phase.extra_step_kwargs
        if phase.mask is not None:
            self.keep = _follow_trajectory

    def trajectory_latents(self, denoising_index: int) -> torch.Tensor:
        """The inversion's latents that denoising step ``denoising_index`` keeps outside the mask: DiffEdit's
        ``image_latents[i]``, the trajectory read backwards."""
        return self.trajectory[len(self.trajectory) - 1 - denoising_index]


def _follow_trajectory(state: InvertThenDenoise, latents: torch.Tensor) -> torch.Tensor:
    """The ``keep`` of a masked text edit's denoising: outside the mask, the inversion's latents."""
    index = state.step_index - state.inversion_steps  # the denoising step just taken
    mask = state.denoising.mask
    return latents * mask + state.trajectory_latents(index) * (1 - mask)


def start_text_edit(scheduler_config: Mapping[str, Any], params: EditParameters, image_mean: torch.Tensor,
                    image_std: torch.Tensor, scaling_factor: float, row_inputs_of: RowInputsFn,
                    latent_mask: torch.Tensor) -> InvertThenDenoise:
    """A text edit's state, its random numbers drawn as DiffEdit draws them (the photo's latents, sampled from
    the edit's generator; DDIM with ``eta > 0`` then draws from the same generator).

    Args:
        image_mean, image_std: the photo's latent distribution (the VAE encoder's).
        row_inputs_of: (prompt rows) -> the UNet's row inputs by name for those rows of the prompt's
            embeddings (``prompts.NEGATIVE_ROW``, ...): how the family hands prompts to its UNet.
        latent_mask: ``[1, 1, h, w]``, 1 = edit; all ones (no mask sent, or one over the whole area): nothing
            is kept from the trajectory.
    """
    generator = torch.Generator().manual_seed(params.seed)
    latents = sample_latents(image_mean, image_std, generator, scaling_factor)
    inverse, inverse_timesteps = inverse_schedule(params, scheduler_config)
    scheduler, timesteps = schedule(params, scheduler_config)
    rows = guidance_rows(params)
    no_channels = (0,) + tuple(latents.shape[2:])
    denoising = _Denoising(
        scheduler=scheduler,
        row_inputs=row_inputs_of([NEGATIVE_ROW, PROMPT_ROW][2 - rows:]),
        conditioning=latents.new_zeros((rows,) + no_channels),
        guidance_scale=params.guidance_scale,
        extra_step_kwargs=step_kwargs(scheduler, generator, params.eta),
        mask=None if bool((latent_mask >= 0.5).all()) else latent_mask.to(latents.dtype),
    )
    return InvertThenDenoise(
        scheduler=inverse,
        timesteps=torch.cat([inverse_timesteps, timesteps]),
        latents=latents,
        conditioning=latents.new_zeros((1,) + no_channels),
        row_inputs=row_inputs_of([SOURCE_ROW]),
        guidance_scale=1.0,  # inversion under the source prompt alone
        generator=generator,
        extra_step_kwargs=step_kwargs(inverse, generator),
        inversion_steps=len(inverse_timesteps),
        denoising=denoising,
    )
