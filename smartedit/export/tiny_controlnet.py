"""A tiny ControlNet for the tiny SD (or SDXL) model, built from its UNet's config (as diffusers' ControlNet inpaint
fast tests build theirs). A freshly built ControlNet's output convolutions are zero (what training starts from), so its
residuals would change nothing and no test of them could fail: those are drawn at random here, large enough that
the control changes a tiny edit by 10-25 dB.
"""

from __future__ import annotations

import math
from pathlib import Path

# The UNet config entries a ControlNet copies (diffusers' ControlNetModel.from_unet copies these and a few more).
_FROM_UNET = ("block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
              "attention_head_dim", "norm_num_groups")
# And an SDXL UNet's: its added conditioning (the pooled prompt and size ids), its attention layout.
_FROM_SDXL_UNET = ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
                   "transformer_layers_per_block", "use_linear_projection")


def build_tiny_controlnet(unet, vae_scale_factor: int, seed: int = 0, latent_channels: int = 4):
    """A ControlNet for ``unet`` taking the ``latent_channels`` latents (the ControlNet of an inpainting UNet sees the
    latents alone) and a 3-channel conditioning image ``vae_scale_factor`` times their size."""
    import torch
    from diffusers import ControlNetModel

    downsamples = int(math.log2(vae_scale_factor))
    copied = _FROM_UNET + (_FROM_SDXL_UNET if unet.config.get("addition_embed_type") else ())
    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        in_channels=latent_channels,
        conditioning_embedding_out_channels=tuple(16 * 2 ** min(level, 1) for level in range(downsamples + 1)),
        **{key: unet.config[key] for key in copied},
    )
    generator = torch.Generator().manual_seed(seed + 1)
    zero_initialised = ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(zero_initialised):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return controlnet.eval()


def write_tiny_controlnet(pipeline_dir: Path, out: Path, seed: int = 0) -> Path:
    """Build the tiny ControlNet for the SD or SDXL pipeline at ``pipeline_dir`` and save it to ``out`` (a
    ControlNetModel folder: ``ControlNetModel.from_pretrained(out)`` loads it)."""
    import diffusers

    pipeline = diffusers.DiffusionPipeline.from_pretrained(str(pipeline_dir))
    vae_scale_factor = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    controlnet = build_tiny_controlnet(pipeline.unet, vae_scale_factor, seed,
                                       latent_channels=pipeline.vae.config.latent_channels)
    controlnet.save_pretrained(out)
    return Path(out)
