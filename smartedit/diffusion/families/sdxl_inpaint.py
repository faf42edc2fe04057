"""Stable Diffusion XL inpainting checkpoints (``diffusers/stable-diffusion-xl-1.0-inpainting-0.1``): a UNet of
9 input channels as the SD inpainting family's, conditioned besides on SDXL's pooled prompt and size ids, as
diffusers' ``StableDiffusionXLInpaintPipeline`` runs it. Its latents start as SD's do (the same draws in the
same order); only what the UNet sees besides them is SDXL's own (``sdxl_conditioning``)."""

from __future__ import annotations

from typing import Any, Mapping

from smartedit.diffusion.denoise import DenoiseState, EditInputs, EncodeFn
from smartedit.diffusion.families import sd_inpaint, sdxl_conditioning
from smartedit.diffusion.prompts import SDXL_PROMPTS
from smartedit.diffusion.recognize import SDXL_INPAINT
from smartedit.diffusion.spec import SDXL_COMPONENTS, SDXL_WEIGHTS, PipelineInfo
from smartedit.edit.parameters import EditParameters
from smartedit.edit.tasks import INPAINTING_TASKS

FAMILY = SDXL_INPAINT
# The models it serves besides the steps (their ONNX graphs: smartedit.export.onnx_export.GRAPHS), and the
# pipeline's modules whose weights they hold (what provenance hashes).
COMPONENTS = SDXL_COMPONENTS
WEIGHTS = SDXL_WEIGHTS
# Two tokenizers into one encoder graph of both CLIP models.
PROMPTS = SDXL_PROMPTS
# diffusers' SDXL inpainting default: the photo's latents noised almost fully, so the masked area keeps a
# trace of what was there (0.9999, not 1.0: at 1.0 the loop starts from noise alone). With a ControlNet, its
# conditioning scale is StableDiffusionXLControlNetInpaintPipeline's default (1.0; SD's pipeline says 0.5).
DEFAULTS: dict = {"strength": 0.9999, "controlnet_conditioning_scale": 1.0}
OWN_PARAMETERS: tuple[str, ...] = ()
# The tasks it serves: those of a UNet that repaints a mask.
TASKS = INPAINTING_TASKS
# SDXL's VAE overflows in FP16: diffusers upcasts it when its config says ``force_upcast`` (SDXL's does; an
# FP16-safe VAE, such as the community's fp16 fix given with ``export --vae``, says False), and so does
# the export: the VAE graphs and engines stay FP32 on the FP16 profiles.
UPCASTS_VAE = True

encodes_init_image = sd_inpaint.encodes_init_image


def start(info: PipelineInfo, scheduler_config: Mapping[str, Any], params: EditParameters, inputs: EditInputs,
          encode_init_image: EncodeFn) -> DenoiseState:
    """Stages 4-9 of diffusers' SDXL ``__call__``: the SD inpainting start, with SDXL's UNet inputs."""
    state = sd_inpaint.start(info, scheduler_config, params, inputs, encode_init_image)
    state.row_inputs = sdxl_conditioning.row_inputs(info, params, inputs, state.rows)
    return state
