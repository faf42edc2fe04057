"""Load the diffusers inpainting pipeline to export: a local folder or a hub id."""

from __future__ import annotations

from pathlib import Path


class UnsupportedModel(ValueError):
    """The model is not a 9-channel Stable Diffusion inpainting pipeline."""


def load_pipeline(source: str | Path):
    """``StableDiffusionInpaintPipeline`` in FP32 on CPU, without the safety checker.

    Export traces on CPU in FP32; FP16 graphs are converted from the FP32 ones afterwards, so no
    GPU is needed to export.
    """
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    pipeline = StableDiffusionInpaintPipeline.from_pretrained(
        str(source), torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    unet_channels = pipeline.unet.config.in_channels
    expected = 2 * pipeline.vae.config.latent_channels + 1
    if unet_channels != expected:
        raise UnsupportedModel(
            f"{source}: the UNet takes {unet_channels} input channels; an inpainting UNet takes {expected} "
            f"(latents + mask + masked-image latents). Use an inpainting checkpoint.")
    return pipeline
