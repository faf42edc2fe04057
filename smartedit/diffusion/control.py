"""ControlNet in the loop, as diffusers' ``StableDiffusionControlNetInpaintPipeline.__call__`` (and its SDXL
counterpart, whose ControlNet takes the pooled prompt and size ids as the UNet does) applies it.

An edit under control carries, besides its family's UNet inputs, the conditioning image on every one of its rows
(``CONTROL_IMAGE``, constant) and, at every step, each row's conditioning scale (``CONTROL_SCALE``: the request's
``controlnet_conditioning_scale`` times diffusers' ``controlnet_keep`` for the step, 0 outside the
``control_guidance_start``/``end`` window and, in guess mode, on the negative prompt's row) and whether it is in
guess mode (``CONTROL_GUESS``). An edit without control on a pipeline with a ControlNet carries the same inputs,
all off (``uncontrolled``), so that edits with and without control share one call per step.

What turns them into the UNet's output is one model: the ControlNet and the UNet fused in one graph
(``smartedit.export.onnx_export.FusedControlGraph``), which runs the ControlNet on every row, scales each row's
residuals as diffusers' ControlNet does (``residual * scale``, the guess-mode level factors first) and adds them
in the UNet; a row of scale 0 gets zeros, which leave the UNet's sums unchanged. It is one model rather than two
because the residuals are large (27 MB a row for SD 1.5 at 512 px): between two models every one of them would
pass through the engine's memory at every step, which cost 8x the throughput on a simulated device
(``benchmarks/control_engine.py``), while one graph costs the ControlNet's compute on the uncontrolled rows of a
call. ``ControlledUNet`` is the same arithmetic with two models (the ControlNet on the controlled rows only): the
reference on diffusers' PyTorch modules, and the two-model design in the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch

from smartedit.diffusion.denoise import SAMPLE, TIMESTEP, DenoiseState
from smartedit.diffusion.spec import ADDED_CONDITIONING, CONTROL_GUESS, CONTROL_IMAGE, CONTROL_SCALE

CONTROL_INPUTS = (CONTROL_IMAGE, CONTROL_SCALE, CONTROL_GUESS)
# The residuals' names between the two models of ``ControlledUNet`` (the down blocks' by index, the mid block's).
DOWN_RESIDUAL, MID_RESIDUAL = "down_block_residual_{}", "mid_block_residual"
PROMPT_STATES = "encoder_hidden_states"

# (the ControlNet's inputs by name: sample, timestep, encoder_hidden_states, controlnet_cond and, SDXL's, text_embeds,
# time_ids) -> its residuals by name (DOWN_RESIDUAL, MID_RESIDUAL), unscaled
ControlNetFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
# (the UNet's inputs by name, the residuals' included) -> noise_pred
ResidualUNetFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]


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


def apply(state: DenoiseState, params, image: torch.Tensor | None, image_size: tuple[int, int]) -> DenoiseState:
    """An edit's control as its record says (``params``: ``control``, ``controlnet_conditioning_scale``,
    ``control_guidance_start``/``end``, ``guess_mode``), with ``image`` its conditioning image; ``control`` none: the
    same inputs, off, at ``image_size`` (height, width: the edit's working size)."""
    if params.control in (None, "none"):
        return uncontrolled(state, image_size)
    if image is None:
        raise ValueError(f"control {params.control} reached the loop without its conditioning image")
    return attach(state, ControlSettings(image=image, conditioning_scale=params.controlnet_conditioning_scale,
                                         guidance_start=params.control_guidance_start,
                                         guidance_end=params.control_guidance_end, guess_mode=params.guess_mode))


def control_image(condition, params) -> torch.Tensor | None:
    """The edit's conditioning image as the loop takes it, from the step tensor preprocess made (``condition``, numpy
    or None); None when the record (``params``) has no control (the tensor is then a placeholder)."""
    if condition is None or params.control in (None, "none"):
        return None
    return torch.from_numpy(condition)


def level_scales(levels: int, guess_mode: bool) -> torch.Tensor:
    """The factor of each residual (the down blocks' ``levels``, then the mid block's) before the conditioning scale:
    1 each, or in guess mode diffusers' ``logspace(-1, 0, levels + 1)`` (0.1 for the first down residual to 1
    for the mid block's)."""
    if guess_mode:
        return torch.logspace(-1, 0, levels + 1)
    return torch.ones(levels + 1)


def residual_layout(unet_config) -> tuple[tuple[int, int], ...]:
    """(channels, times halved) of each residual a diffusers ``UNet2DConditionModel`` with this config takes from a
    ControlNet: conv_in's output, then each down block's resnets' and downsampler's, then the mid block's."""
    channels = list(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    found = [(channels[0], 0)]
    for level, (out_channels, count) in enumerate(zip(channels, layers)):
        found += [(out_channels, level)] * count
        if level < len(channels) - 1:  # every block but the last ends in a downsampler
            found.append((out_channels, level + 1))
    return tuple(found + [(channels[-1], found[-1][1])])


class ControlledUNet:
    """A UNet function whose rows may be under control, from two models: the ControlNet on the rows that ask for
    it, then the UNet with every row's residuals (zeros for the others), by ``DOWN_RESIDUAL``/``MID_RESIDUAL``.
    Inputs and outputs are numpy arrays, as a BLS call's are."""

    def __init__(self, unet: ResidualUNetFn, controlnet: ControlNetFn, latent_channels: int, layout):
        """``layout``: the residuals' (channels, times halved), ``residual_layout`` of the UNet's config."""
        self._unet, self._controlnet = unet, controlnet
        self._latent_channels = latent_channels
        self._names = [DOWN_RESIDUAL.format(index) for index in range(len(layout) - 1)] + [MID_RESIDUAL]
        self._layout = layout

    def _zeros(self, rows: int, height: int, width: int) -> dict[str, np.ndarray]:
        found = {}
        for name, (channels, halved) in zip(self._names, self._layout):
            size = [height, width]
            for _ in range(halved):
                size = [(side + 1) // 2 for side in size]
            found[name] = np.zeros((rows, channels, *size), dtype=np.float32)
        return found

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        inputs = dict(inputs)
        image, scales, guess = (inputs.pop(name) for name in CONTROL_INPUTS)
        sample = inputs[SAMPLE]
        residuals = self._zeros(sample.shape[0], sample.shape[2], sample.shape[3])
        active = np.flatnonzero(scales != 0)
        if len(active):
            answered = self._controlnet({
                SAMPLE: np.ascontiguousarray(sample[active, :self._latent_channels]),
                TIMESTEP: inputs[TIMESTEP][active],
                PROMPT_STATES: inputs[PROMPT_STATES][active],
                CONTROL_IMAGE: image[active],
                **{name: inputs[name][active] for name in ADDED_CONDITIONING if name in inputs},
            })
            # Each row's factor per residual: the float32 level factor times the float32 scale, then one
            # multiplication of the residual, as diffusers' ControlNet computes it.
            levels = len(self._names) - 1
            factors = torch.stack([level_scales(levels, bool(guess[row])) for row in active.tolist()])
            factors = (factors * torch.from_numpy(np.ascontiguousarray(scales[active], dtype=np.float32))[:, None])
            factors = factors.numpy()
            for level, name in enumerate(self._names):
                residuals[name][active] = answered[name] * factors[:, level, None, None, None]
        return self._unet({**inputs, **residuals})
