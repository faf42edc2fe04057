"""Any Stable Diffusion XL checkpoint with a 4-channel UNet (SDXL base and its fine-tunes), inpainting by
latent blending exactly as diffusers' ``StableDiffusionXLInpaintPipeline`` does with such a UNet: the SD
latent-blending start and keeping (``sd_latent_blend``), with SDXL's UNet inputs (``sdxl_conditioning``); and
text edits by inversion (smartedit.diffusion.inversion) with the same inputs."""

from __future__ import annotations

from typing import Any, Mapping

from smartedit.diffusion.denoise import DenoiseState, EditInputs, EncodeFn
from smartedit.diffusion.families import sd_latent_blend, sdxl_conditioning
from smartedit.diffusion.inversion import start_text_edit
from smartedit.diffusion.prompts import SDXL_PROMPTS
from smartedit.diffusion.recognize import SDXL_LATENT_BLEND
from smartedit.diffusion.spec import SDXL_COMPONENTS, SDXL_WEIGHTS, PipelineInfo
from smartedit.edit.parameters import EditParameters
from smartedit.edit.tasks import TEXT_EDIT

FAMILY = SDXL_LATENT_BLEND
# The models it serves besides the steps (their ONNX graphs: smartedit.export.onnx_export.GRAPHS), and the
# pipeline's modules whose weights they hold (what provenance hashes).
COMPONENTS = SDXL_COMPONENTS
WEIGHTS = SDXL_WEIGHTS
PROMPTS = SDXL_PROMPTS
# diffusers' SDXL inpainting pipeline's default, whatever the UNet; with a ControlNet, its conditioning scale is
# StableDiffusionXLControlNetInpaintPipeline's default (1.0; SD's pipeline says 0.5).
DEFAULTS: dict = {"strength": 0.9999, "controlnet_conditioning_scale": 1.0}
# The parameters only it (and sd-latent-blend) takes: a text edit's source prompt.
OWN_PARAMETERS = sd_latent_blend.OWN_PARAMETERS
# The tasks it serves: those of a UNet that repaints a mask, and text edits by inversion.
TASKS = sd_latent_blend.TASKS
# SDXL's VAE overflows in FP16: diffusers upcasts it when its config says ``force_upcast`` (SDXL's does; an
# FP16-safe VAE, such as the community's fp16 fix given with ``export --vae``, says False), and so does
# the export: the VAE graphs and engines stay FP32 on the FP16 profiles.
UPCASTS_VAE = True

encodes_init_image = sd_latent_blend.encodes_init_image


def start(info: PipelineInfo, scheduler_config: Mapping[str, Any], params: EditParameters, inputs: EditInputs,
          encode_init_image: EncodeFn) -> DenoiseState:
    """Stages 4-9 of diffusers' SDXL ``__call__`` with a 4-channel UNet; a text edit's inversion and denoising."""
    if params.task == TEXT_EDIT:
        return start_text_edit(scheduler_config, params, *encode_init_image(), info.vae_scaling_factor,
                               lambda rows: sdxl_conditioning.prompt_row_inputs(info, params, inputs, rows),
                               inputs.latent_mask)
    state = sd_latent_blend.start(info, scheduler_config, params, inputs, encode_init_image)
    state.row_inputs = sdxl_conditioning.row_inputs(info, params, inputs, state.rows)
    return state
