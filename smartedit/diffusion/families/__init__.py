"""The model families: the seam through which the loop, the engine and the serving models reach a
family's own ways (diffusers has a pipeline class per family; SmartEdit has a module per family).

Each family module declares ``FAMILY`` (its name and how an exported folder is recognized:
smartedit.diffusion.recognize) and answers:

- ``COMPONENTS``: the models it serves besides the steps (``ComponentSpec``s; their ONNX graphs are
  ``smartedit.export.onnx_export.GRAPHS[family]``), and ``WEIGHTS``: the pipeline's modules whose
  weights they hold (what provenance hashes);
- ``PROMPTS``: how prompts become embeddings (``smartedit.diffusion.prompts.PromptEncoding``: its
  tokenizers, the encoder that takes their ids, the embeddings it answers by the names ``start`` reads);
- ``DEFAULTS``: the parameters whose default differs for it from the contract's (SDXL's strength
  0.9999, its ControlNet's conditioning scale 1.0), by name (those a pipeline refuses are dropped); the
  server's configuration and the task's defaults still come first;
- ``TASKS``: the tasks its pipelines serve, the first their default (``smartedit.edit.tasks``: the inpainting
  families serve inpaint, remove and replace_background; InstructPix2Pix serves instruct);
- ``OWN_PARAMETERS``: the contract's parameters that only it takes (InstructPix2Pix's
  ``image_guidance_scale``): a pipeline of another family refuses a request that sets one, and its
  ``server_info`` does not list them;
- ``UPCASTS_VAE``: whether its VAE stays FP32 on the FP16 profiles when the VAE's config says
  ``force_upcast``, as diffusers' pipeline of the family upcasts it (SDXL's: yes; SD's: never);
- ``encodes_init_image(params)``: whether an edit needs the photo's own latents (the serving models
  keep the photo for the VAE encoder only then);
- ``start(info, scheduler_config, params, inputs, encode_init_image)``: the edit's ``DenoiseState`` --
  how its latents start, what the UNet sees besides them (``conditioning`` channels after the latents,
  and ``row_inputs``: the UNet's other inputs by name, one row per UNet row) and how its latents are
  kept after each step (``keep``), and how its rows' outputs combine into one prediction (``guide``;
  default: classifier-free guidance over two rows). The engine batches whatever rows and named inputs a
  state asks for.

``pipeline.json`` names the family (``PipelineInfo.family``); nothing else tests which family it is.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping

from smartedit.diffusion.denoise import DenoiseState, EditInputs, EncodeFn
from smartedit.diffusion.families import (
    instruct_pix2pix, sd_inpaint, sd_latent_blend, sdxl_inpaint, sdxl_latent_blend,
)
from smartedit.diffusion.prompts import PromptEncoding
from smartedit.diffusion.recognize import KNOWN
from smartedit.diffusion import control
from smartedit.diffusion.spec import UNET, VAE_DECODER, VAE_ENCODER, PipelineInfo, fused_control_unet_spec
from smartedit.edit.parameters import EditParameters, FamilyParameters
from smartedit.edit.tasks import TEXT_EDIT
from smartedit_client import _contract as wire

FAMILIES: dict[str, ModuleType] = {module.FAMILY.name: module for module in (
    sd_inpaint, sd_latent_blend, sdxl_inpaint, sdxl_latent_blend, instruct_pix2pix)}
# The pipeline's attribute holding the ControlNet it is exported with (the name diffusers' ControlNet pipelines use).
CONTROLNET_MODULE = "controlnet"
assert set(FAMILIES) == {family.name for family in KNOWN}, "every family recognized has its module, and only those"


def family_of(info: PipelineInfo) -> ModuleType:
    """The module of the family ``info`` names.

    Raises:
        ValueError: a family this SmartEdit does not know (a repository exported by a newer one).
    """
    try:
        return FAMILIES[info.family]
    except KeyError:
        raise ValueError(f"pipeline.json names the family {info.family!r}; this SmartEdit knows "
                         f"{', '.join(sorted(FAMILIES))}: export the model again with this version") from None


def components_of(info: PipelineInfo) -> tuple:
    """The ``ComponentSpec``s of the models ``info``'s family serves besides the steps; with a ControlNet, the UNet's
    is the fused graph's (smartedit.diffusion.control)."""
    components = family_of(info).COMPONENTS
    if not info.controlnet:
        return components
    return tuple(fused_control_unet_spec(spec) if spec.name == UNET.name else spec for spec in components)


def weights_of(info: PipelineInfo) -> tuple[str, ...]:
    """The pipeline's modules whose weights ``info``'s family serves (what provenance hashes): its ControlNet's too."""
    return family_of(info).WEIGHTS + ((CONTROLNET_MODULE,) if info.controlnet else ())


def fp32_components(info: PipelineInfo, vae_config: Mapping[str, Any]) -> frozenset[str]:
    """The components kept FP32 whatever the export's precision: the VAE's, when ``info``'s family upcasts a
    VAE whose config (``vae_config``) says ``force_upcast`` (diffusers' default when it says nothing)."""
    if family_of(info).UPCASTS_VAE and vae_config.get("force_upcast", True):
        return frozenset({VAE_ENCODER.name, VAE_DECODER.name})
    return frozenset()


def prompts_of(info: PipelineInfo) -> PromptEncoding:
    """How ``info``'s family makes its prompts' embeddings."""
    return family_of(info).PROMPTS


def family_parameters(info: PipelineInfo) -> FamilyParameters:
    """What ``info``'s pipeline says about a request's parameters: its family's defaults, and the parameters of
    other families, which it refuses; the ControlNet's parameters unless it serves one (which takes no text edit:
    the inversion's rows would need their own control)."""
    module = family_of(info)
    others = {name for other in FAMILIES.values() if other is not module for name in other.OWN_PARAMETERS}
    refused = others - set(module.OWN_PARAMETERS)
    reasons = {}
    defaults = dict(module.DEFAULTS)
    tasks = tuple(module.TASKS)
    if info.controlnet:
        defaults[wire.CONTROLNET.name] = info.controlnet
        if TEXT_EDIT in tasks:
            tasks = tuple(task for task in tasks if task != TEXT_EDIT)
            refused |= {wire.SOURCE_PROMPT.name}  # text_edit's alone
            why = "it serves a ControlNet, and a text edit's inversion would need a control of its own"
            reasons = {wire.TASK.name: why, wire.SOURCE_PROMPT.name: why}
    else:
        control = {spec.name for spec in wire.CONTROL_INPUTS if spec in wire.PARAMETERS}
        refused |= control
        reasons = {name: "it serves no ControlNet: export one with --controlnet" for name in control}
    defaults = {name: value for name, value in defaults.items() if name not in refused}
    return FamilyParameters(family=info.family, defaults=defaults, refused=frozenset(refused), tasks=tasks,
                            reasons=reasons)


def start_denoising(info: PipelineInfo, scheduler_config: Mapping[str, Any], params: EditParameters,
                    inputs: EditInputs, encode_init_image: EncodeFn) -> DenoiseState:
    """The loop's state of one image of the edit ``params`` describes (its ``seed``: a variation's own),
    started as its family starts it; on a pipeline with a ControlNet, with its control (or none) on its rows."""
    state = family_of(info).start(info, scheduler_config, params, inputs, encode_init_image)
    if info.controlnet:
        size = tuple(side * info.vae_scale_factor for side in inputs.latent_mask.shape[-2:])
        state = control.apply(state, params, inputs.control_image, size)
    return state
