"""Load the diffusers inpainting pipeline to export: a local folder or a hub id."""

from __future__ import annotations

from pathlib import Path


class UnsupportedModel(ValueError):
    """The model cannot be loaded, or is not a 9-channel Stable Diffusion inpainting pipeline."""


def _looks_like_a_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or "\\" in source or Path(source).exists() or source.count("/") > 1


def _check_local(source: str) -> None:
    folder = Path(source).expanduser()
    if not folder.exists():
        raise UnsupportedModel(f"{source}: no such folder (give a diffusers inpainting pipeline folder or a "
                               f"hub id such as runwayml/stable-diffusion-inpainting)")
    if not (folder / "model_index.json").is_file():
        raise UnsupportedModel(f"{source}: not a diffusers pipeline folder (it has no model_index.json)")


def load_pipeline(source: str | Path):
    """``StableDiffusionInpaintPipeline`` in FP32 on CPU, without the safety checker.

    Export traces on CPU in FP32; FP16 graphs are converted from the FP32 ones afterwards, so no
    GPU is needed to export.
    """
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    source = str(source)
    if _looks_like_a_path(source):
        _check_local(source)
    try:
        pipeline = StableDiffusionInpaintPipeline.from_pretrained(
            source, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError, TypeError) as error:  # hub errors are OSErrors or ValueErrors; bad configs TypeErrors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UnsupportedModel(f"{source}: could not load it as a diffusers inpainting pipeline: {reason}") from None
    pipeline.set_progress_bar_config(disable=True)
    unet_channels = pipeline.unet.config.in_channels
    expected = 2 * pipeline.vae.config.latent_channels + 1
    if unet_channels != expected:
        raise UnsupportedModel(
            f"{source}: the UNet takes {unet_channels} input channels; an inpainting UNet takes {expected} "
            f"(latents + mask + masked-image latents). Use an inpainting checkpoint.")
    return pipeline
