"""Load the diffusers pipeline to export (a local folder or a hub id), once its family is known."""

from __future__ import annotations

import logging
from pathlib import Path

from smartedit.diffusion.recognize import (
    INSTRUCT_PIX2PIX, SD_INPAINT, SD_LATENT_BLEND, SDXL_INPAINT, SDXL_LATENT_BLEND, Found, UnknownFamily, identify,
    read_found,
)

log = logging.getLogger(__name__)

# The diffusers pipeline class that loads (and is the reference for) each family, with what it is told: a
# 4-channel checkpoint loads into the inpainting class as well, which is how diffusers inpaints with it.
# No safety checker (the served models are the UNet, encoders and VAE); no SDXL watermark (postprocess
# writes the PNG, and the reference is compared without one).
_SD = ("StableDiffusionInpaintPipeline", dict(safety_checker=None, requires_safety_checker=False))
_SDXL = ("StableDiffusionXLInpaintPipeline", dict(add_watermarker=False))
_INSTRUCT = ("StableDiffusionInstructPix2PixPipeline", dict(safety_checker=None, requires_safety_checker=False))
PIPELINE_CLASSES = {SD_INPAINT.name: _SD, SD_LATENT_BLEND.name: _SD,
                    SDXL_INPAINT.name: _SDXL, SDXL_LATENT_BLEND.name: _SDXL, INSTRUCT_PIX2PIX.name: _INSTRUCT}


class UnsupportedModel(ValueError):
    """The model cannot be loaded, or is of no family this server knows."""


def _looks_like_a_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or "\\" in source or Path(source).exists() or source.count("/") > 1


def _check_local(source: str) -> None:
    folder = Path(source).expanduser()
    if not folder.exists():
        raise UnsupportedModel(f"{source}: no such folder (give a diffusers pipeline folder or a "
                               f"hub id such as runwayml/stable-diffusion-inpainting)")
    if not (folder / "model_index.json").is_file():
        raise UnsupportedModel(f"{source}: not a diffusers pipeline folder (it has no model_index.json)")


def _config(source: str, subfolder: str | None) -> dict:
    """A folder's (or hub id's) ``model_index.json``, or a component's ``config.json``.

    Raises:
        OSError, ValueError: it cannot be read (no such file, hub unreachable, not JSON).
    """
    from diffusers import ConfigMixin

    class _Config(ConfigMixin):
        config_name = "config.json" if subfolder else "model_index.json"

    return dict(_Config.load_config(source, subfolder=subfolder))


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def found_in(source: str) -> Found:
    """What ``source`` declares (its pipeline class, components, UNet channels), read before any weights.

    Raises:
        UnsupportedModel: its configs cannot be read.
    """
    try:
        index = _config(source, None)
        has = lambda name: isinstance(index.get(name), list) and index[name][0] is not None  # noqa: E731
        return read_found(index, _config(source, "unet") if has("unet") else None,
                          _config(source, "vae") if has("vae") else None)
    except (OSError, ValueError) as error:
        hint = "" if _looks_like_a_path(source) else " (a hub id needs the Hub reachable, or the model in its cache)"
        raise UnsupportedModel(f"{source}: could not read it as a diffusers pipeline: {_first_line(error)}{hint}") \
            from None


def load_pipeline(source: str | Path):
    """The family's diffusers inpainting pipeline (``StableDiffusionInpaintPipeline``,
    ``StableDiffusionXLInpaintPipeline``) in FP32 on CPU, without a safety checker or watermark; in FP16
    (its VAE FP32) when FP32 would not fit in memory: the export then makes one component FP32 at a time
    (smartedit.export.memory).

    Export traces on CPU in FP32; FP16 graphs are converted from the FP32 ones afterwards, so no
    GPU is needed to export.

    Raises:
        UnsupportedModel: no such folder, a family this server does not know, weights that cannot be
            loaded, or a pipeline too large for this machine's memory (naming what it needs).
    """
    import diffusers
    import torch

    source = str(source)
    if _looks_like_a_path(source):
        _check_local(source)
    try:
        family = identify(found_in(source))  # before the weights: a family this server does not know is refused
    except UnknownFamily as error:
        raise UnsupportedModel(f"{source}: {error}") from None
    class_name, options = PIPELINE_CLASSES[family.name]
    dtype = torch.float16 if _needs_low_memory(source, family) else torch.float32
    try:
        pipeline = getattr(diffusers, class_name).from_pretrained(source, torch_dtype=dtype, **options)
    except (OSError, ValueError, TypeError) as error:  # hub errors are OSErrors or ValueErrors; bad configs TypeErrors
        raise UnsupportedModel(f"{source}: could not load it as a diffusers pipeline: "
                               f"{_first_line(error)}") from None
    pipeline.set_progress_bar_config(disable=True)
    if dtype != torch.float32:
        pipeline.vae.float()  # small, and what fits the previews: kept FP32 throughout
    check_servable(pipeline, source)
    return pipeline


def check_servable(pipeline, source: str) -> None:
    """Refuse, by name, a loaded pipeline whose shapes the server cannot take.

    Raises:
        UnsupportedModel: its UNet's added embedding does not fit the ids its config makes, its VAE
            normalizes latents with ``latents_mean``/``latents_std`` (Playground v2.5's), which the loop does
            not apply, or its UNet takes a guidance embedding (``time_cond_proj_dim``: an LCM-distilled
            checkpoint such as LCM_Dreamshaper_v7), which the served UNet has no input for.
    """
    from smartedit.diffusion.spec import PipelineInfo

    if pipeline.unet.config.get("time_cond_proj_dim") is not None:
        raise UnsupportedModel(f"{source}: its UNet takes a guidance embedding (unet time_cond_proj_dim "
                               f"{pipeline.unet.config.time_cond_proj_dim}, as an LCM-distilled checkpoint's does), "
                               f"which this server does not serve; an LCM-LoRA on its base model is served "
                               f"(--lora FILE --scheduler lcm)")

    if pipeline.vae.config.get("latents_mean") is not None:
        raise UnsupportedModel(f"{source}: its VAE normalizes latents with latents_mean/latents_std (as Playground "
                               f"v2.5's does), which this server does not apply")
    try:
        PipelineInfo.from_pipeline(pipeline)
    except ValueError as error:
        raise UnsupportedModel(f"{source}: {error}") from None


def _needs_low_memory(source: str, family) -> bool:
    """Whether the weights must be loaded in FP16 to fit (smartedit.export.memory), from the files on disk.

    Raises:
        UnsupportedModel: even component by component it cannot fit; the message names the memory needed.
    """
    from smartedit.diffusion.families import FAMILIES
    from smartedit.export.memory import ExportTooLarge, parameters_on_disk, plan_export

    if not Path(source).is_dir():
        return False  # a hub id: its size is not known before it is loaded
    try:
        parameters = parameters_on_disk(Path(source), FAMILIES[family.name].WEIGHTS)
    except ValueError as error:
        raise UnsupportedModel(f"{source}: {error}") from None
    if parameters is None:
        return False
    try:
        plan = plan_export(parameters)
    except ExportTooLarge as error:
        raise UnsupportedModel(f"{source}: {error}") from None
    if plan.low_memory:
        log.warning("%s: loading in FP16 and exporting one component in FP32 at a time (%s)", source, plan.describe())
    return plan.low_memory


def replace_vae(pipeline, source: str | Path) -> None:
    """Give ``pipeline`` the VAE at ``source`` (a VAE folder or hub id, or a pipeline folder's ``vae/``): an
    FP16-safe SDXL VAE, say, whose config says ``force_upcast: false``.

    Raises:
        UnsupportedModel: it cannot be loaded as a VAE, or its latents are not the pipeline's (channels, or
            the scale between pixels and latents).
    """
    import torch
    from diffusers import AutoencoderKL

    source = str(source)
    subfolder = "vae" if (Path(source) / "model_index.json").is_file() else None
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder=subfolder, torch_dtype=torch.float32)
    except (OSError, ValueError, TypeError) as error:
        raise UnsupportedModel(f"{source}: could not load it as a diffusers VAE (AutoencoderKL): "
                               f"{_first_line(error)}") from None
    own, new = pipeline.vae.config, vae.config

    def latents(config) -> str:
        return (f"{config.latent_channels} channels at 1/{2 ** (len(config.block_out_channels) - 1)} scale, scaling "
                f"factor {config.scaling_factor}")

    # Another latent space (SD's VAE for SDXL, 0.18215 against 0.13025) would decode the UNet's latents wrong.
    if latents(new) != latents(own):
        raise UnsupportedModel(f"{source}: its latents ({latents(new)}) are not the pipeline's ({latents(own)})")
    pipeline.register_modules(vae=vae.eval())
    check_servable(pipeline, source)


# The ControlNet config entries that must be its UNet's: the residuals it makes are added to that UNet's blocks,
# and it takes the UNet's prompt states and (SDXL's) added conditioning, pooled prompt and size ids.
_CONTROLNET_SHAPE = ("block_out_channels", "layers_per_block", "cross_attention_dim")
_CONTROLNET_ADDED = ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")


def attach_controlnet(pipeline, source: str | Path) -> None:
    """Give ``pipeline`` the ControlNet at ``source`` (a diffusers ``ControlNetModel`` folder or hub id) as its
    ``controlnet``, which the export fuses with its UNet (smartedit.diffusion.control).

    Raises:
        UnsupportedModel: it cannot be loaded as a ControlNet; the pipeline's family has no served ControlNet (SD
            1.x/2.x and SDXL, inpainting and 4-channel checkpoints, do; InstructPix2Pix does not); a ControlNet of
            another base (its blocks, prompt width or added conditioning are not the UNet's, or it takes other
            latents); one that pools its conditions (shuffle).
    """
    from diffusers import ControlNetModel

    from smartedit.diffusion.recognize import SD_INPAINT, SD_LATENT_BLEND, SDXL_INPAINT, SDXL_LATENT_BLEND
    from smartedit.diffusion.spec import PipelineInfo

    source = str(source)
    family = PipelineInfo.from_pipeline(pipeline).family
    controlled = (SD_INPAINT.name, SD_LATENT_BLEND.name, SDXL_INPAINT.name, SDXL_LATENT_BLEND.name)
    if family not in controlled:
        raise UnsupportedModel(f"{source}: a ControlNet is served with SD 1.x/2.x and SDXL pipelines (families "
                               f"{', '.join(controlled)}); this pipeline's family is {family}")
    try:
        controlnet = ControlNetModel.from_pretrained(source, torch_dtype=pipeline.unet.dtype)
    except (OSError, ValueError, TypeError) as error:
        raise UnsupportedModel(f"{source}: could not load it as a diffusers ControlNet (ControlNetModel): "
                               f"{_first_line(error)}") from None
    own, new = pipeline.unet.config, controlnet.config
    differing = [f"{key} {new[key]} (the UNet's: {own[key]})" for key in _CONTROLNET_SHAPE
                 if list(_as_list(new[key])) != list(_as_list(own[key]))]
    # An SD ControlNet on an SDXL UNet (or the reverse) differs here first: SDXL's take its pooled prompt and ids.
    differing += [f"{key} {new.get(key)} (the UNet's: {own.get(key)})" for key in _CONTROLNET_ADDED
                  if new.get(key) != own.get(key)]
    if int(new["in_channels"]) != int(pipeline.vae.config.latent_channels):
        differing.append(f"in_channels {new['in_channels']} (the latents': {pipeline.vae.config.latent_channels})")
    if differing:
        raise UnsupportedModel(f"{source}: a ControlNet for another base model: {'; '.join(differing)}")
    if int(new.get("conditioning_channels", 3)) != 3:
        raise UnsupportedModel(f"{source}: takes a conditioning image of {new['conditioning_channels']} channels; the "
                               f"served graph takes RGB (3)")
    if new.get("global_pool_conditions"):
        raise UnsupportedModel(f"{source}: pools its conditions (global_pool_conditions, a shuffle ControlNet), "
                               f"which the served graph does not do")
    pipeline.controlnet = controlnet.eval()


def _as_list(value):
    return value if isinstance(value, (list, tuple)) else [value]
