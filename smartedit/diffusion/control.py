"""ControlNet in the loop, as diffusers' ``StableDiffusionControlNetInpaintPipeline.__call__`` applies it.

An edit under control carries, besides its family's UNet inputs, the conditioning image on every one of its rows
(``CONTROL_IMAGE``, constant) and, at every step, each row's conditioning scale (``CONTROL_SCALE``: the request's
``controlnet_conditioning_scale`` times diffusers' ``controlnet_keep`` for the step, 0 outside the
``control_guidance_start``/``end`` window and, in guess mode, on the negative prompt's row) and whether it is in
guess mode (``CONTROL_GUESS``). ``ControlledUNet`` turns those into the UNet's residual inputs: it calls the
ControlNet on the rows whose scale is not 0 only (the 4 latent channels before the mask concatenation, the rows'
timesteps and prompt embeddings, their conditioning images), scales each row's residuals as diffusers' ControlNet
does, and gives every other row zero residuals, which leave the UNet's sum unchanged. So edits with and without
control share one UNet call per step, and an edit's rows see the same arithmetic whatever else is in the batch.

The ControlNet is called with ``conditioning_scale`` 1 and the scales are applied here, per row (diffusers
multiplies inside the ControlNet: ``residual * scale``, the same one multiplication).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from smartedit.diffusion.denoise import SAMPLE, TIMESTEP, DenoiseState

CONTROL_IMAGE, CONTROL_SCALE, CONTROL_GUESS = "controlnet_cond", "control_scale", "control_guess"
CONTROL_INPUTS = (CONTROL_IMAGE, CONTROL_SCALE, CONTROL_GUESS)
PROMPT_STATES = "encoder_hidden_states"
DOWN_RESIDUALS, MID_RESIDUAL = "down_block_additional_residuals", "mid_block_additional_residual"

# (the ControlNet's inputs by name: sample, timestep, encoder_hidden_states, controlnet_cond) -> (its down-block
# residuals, its mid-block residual), unscaled
ControlNetFn = Callable[[Mapping[str, torch.Tensor]], tuple[list[torch.Tensor], torch.Tensor]]
# (the UNet's inputs by name, the residuals' included: DOWN_RESIDUALS a list) -> noise_pred
ResidualUNetFn = Callable[[Mapping[str, object]], torch.Tensor]


@dataclass(frozen=True)
class ControlSettings:
    """One edit's control, as the reference pipeline takes it."""

    image: torch.Tensor  # [1, 3, H, W] at the edit's working size, the ControlNet's range ([0, 1]; -1 = masked)
    conditioning_scale: float = 0.5  # the reference's default
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    guess_mode: bool = False


def keep(settings: ControlSettings, index: int, total: int) -> float:
    """diffusers' ``controlnet_keep`` of step ``index`` of ``total`` (after ``strength``): 1 inside the window."""
    return 1.0 - float(index / total < settings.guidance_start or (index + 1) / total > settings.guidance_end)


def attach(state: DenoiseState, settings: ControlSettings) -> DenoiseState:
    """Put ``settings`` on ``state``'s rows: the image as a row input, the scales as a per-step one.

    Guess mode under classifier-free guidance runs the ControlNet on the positive prompt's row only (the last
    of the two), as the reference does; the negative row's residuals are zeros.
    """
    rows = state.rows
    guided = rows == 2 and state.do_classifier_free_guidance
    skip_negative = settings.guess_mode and guided
    state.row_inputs = {**state.row_inputs,
                        CONTROL_IMAGE: settings.image.to(torch.float32).expand(rows, -1, -1, -1).contiguous(),
                        CONTROL_GUESS: torch.full((rows,), float(settings.guess_mode))}

    def scales(current: DenoiseState) -> dict[str, torch.Tensor]:
        scale = settings.conditioning_scale * keep(settings, current.step_index, current.total_steps)
        row_scales = torch.full((rows,), scale, dtype=torch.float32)
        if skip_negative:
            row_scales[0] = 0.0
        return {CONTROL_SCALE: row_scales}

    state.step_inputs = scales
    return state


def uncontrolled(state: DenoiseState, image_size: tuple[int, int]) -> DenoiseState:
    """Give an edit without control the same row inputs, all off: on a pipeline served with a ControlNet, every
    edit's rows have them, so that controlled and uncontrolled edits share UNet calls."""
    height, width = image_size
    return attach(state, ControlSettings(image=torch.zeros(1, 3, height, width), conditioning_scale=0.0))


def level_scales(levels: int, guess_mode: bool) -> torch.Tensor:
    """The factor of each residual (the down blocks' ``levels``, then the mid block's) before the conditioning scale:
    1 each, or in guess mode diffusers' ``logspace(-1, 0, levels + 1)`` (0.1 for the first down residual to 1
    for the mid block's)."""
    if guess_mode:
        return torch.logspace(-1, 0, levels + 1)
    return torch.ones(levels + 1)


class ControlledUNet:
    """A UNet function (``denoise.UNetFn``) whose rows may be under control: the ControlNet on the rows that ask
    for it, then the UNet with every row's residuals."""

    def __init__(self, unet: ResidualUNetFn, controlnet: ControlNetFn, latent_channels: int,
                 residual_shapes: Callable[[int, int], list[tuple[int, int, int]]]):
        """``residual_shapes(latent_height, latent_width)``: the (channels, height, width) of each residual, the
        down blocks' then the mid block's (what zero residuals are made of when no row is under control)."""
        self._unet, self._controlnet = unet, controlnet
        self._latent_channels = latent_channels
        self._residual_shapes = residual_shapes

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = dict(inputs)
        image = torch.as_tensor(np.asarray(inputs.pop(CONTROL_IMAGE)))
        scales = torch.as_tensor(np.asarray(inputs.pop(CONTROL_SCALE)))
        guess = torch.as_tensor(np.asarray(inputs.pop(CONTROL_GUESS)))
        sample = torch.as_tensor(np.asarray(inputs[SAMPLE]))
        rows, height, width = sample.shape[0], sample.shape[2], sample.shape[3]
        residuals = [torch.zeros((rows,) + shape, dtype=torch.float32)
                     for shape in self._residual_shapes(height, width)]
        active = torch.nonzero(scales != 0).flatten()
        if len(active):
            down, mid = self._controlnet({
                SAMPLE: sample[active, :self._latent_channels],
                TIMESTEP: torch.as_tensor(np.asarray(inputs[TIMESTEP]))[active],
                PROMPT_STATES: torch.as_tensor(np.asarray(inputs[PROMPT_STATES]))[active],
                CONTROL_IMAGE: image[active],
            })
            for position, row in enumerate(active.tolist()):
                factors = level_scales(len(down), bool(guess[row])) * scales[row]
                for level, residual in enumerate(list(down) + [mid]):
                    residuals[level][row] = residual[position] * factors[level]
        return self._unet({**inputs, DOWN_RESIDUALS: residuals[:-1], MID_RESIDUAL: residuals[-1]})


def unet_residual_shapes(unet_config: Mapping):
    """``residual_shapes`` for a diffusers ``UNet2DConditionModel`` config: the residuals its down blocks take
    (conv_in's output, then each resnet's and each downsampler's) and its mid block's."""
    channels = list(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)

    def shapes(height: int, width: int) -> list[tuple[int, int, int]]:
        found = [(channels[0], height, width)]
        for level, (out_channels, count) in enumerate(zip(channels, layers)):
            found += [(out_channels, height, width)] * count
            if level < len(channels) - 1:  # every block but the last ends in a downsampler
                height, width = (height + 1) // 2, (width + 1) // 2
                found.append((out_channels, height, width))
        return found + [(channels[-1], height, width)]

    return shapes
