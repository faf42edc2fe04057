"""A tiny, seeded, randomly initialised SDXL inpainting pipeline, built from configs (nothing downloaded).

The SDXL family's test model, as ``tiny_model`` is the SD family's: an ordinary diffusers folder that
``StableDiffusionXLInpaintPipeline.from_pretrained`` loads. It keeps every structural trait of SDXL that
the serving path must get right, at toy widths, after diffusers' own fast SDXL inpainting tests:

- two text encoders of different widths (CLIP ViT-L's role: hidden 32; OpenCLIP bigG's: hidden 48 with
  a 32-wide text projection), whose penultimate hidden states are concatenated (32 + 48 = 80, the UNet's
  ``cross_attention_dim``) and the second's pooled projection is ``text_embeds``;
- a UNet with ``addition_embed_type="text_time"``: 6 time ids (original size, crop corner, target size)
  embedded 8 wide each, plus the 32-wide pooled embedding (``projection_class_embeddings_input_dim``
  = 6 * 8 + 32); 9 input channels as ``stable-diffusion-xl-1.0-inpainting-0.1``, or 4 (``text_to_image``)
  as an SDXL base checkpoint;
- two tokenizers, the second padding with "!" as SDXL's OpenCLIP tokenizer does; and the model's
  ``force_zeros_for_empty_prompt`` and ``requires_aesthetics_score`` as the inpainting checkpoint sets them.
"""

from __future__ import annotations

import json
from pathlib import Path

from smartedit.export.tiny_model import stable_diffusion_scheduler, tiny_text_config, tiny_vae, write_tokenizer

# The encoders' widths: different, so that a mix-up of the two shows as a shape error, not a quiet bug.
FIRST_ENCODER_WIDTH, SECOND_ENCODER_WIDTH, POOLED_WIDTH = 32, 48, 32
TIME_EMBED_WIDTH = 8
TIME_IDS = 6  # original (h, w), crop top-left (y, x), target (h, w)

# Raised whenever build_tiny_sdxl changes what it builds, so that an older embedded folder is rebuilt.
TINY_SDXL_VERSION = 1
_STAMP = "smartedit-tiny-model.json"  # the tiny SD model's stamp file, with "family": "sdxl"


def is_current_tiny_sdxl(folder: Path) -> bool:
    """Whether ``folder`` holds the tiny SDXL inpainting pipeline this version of SmartEdit builds."""
    try:
        stamp = json.loads((Path(folder) / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    return (stamp.get("family") == "sdxl" and stamp.get("version") == TINY_SDXL_VERSION
            and not stamp.get("text_to_image", False))


def build_tiny_sdxl(seed: int = 0, text_to_image: bool = False):
    """(unet, vae, text_encoder, text_encoder_2, scheduler); the same seed gives identical weights."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4 if text_to_image else 9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_WIDTH,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=TIME_IDS * TIME_EMBED_WIDTH + POOLED_WIDTH,
        cross_attention_dim=FIRST_ENCODER_WIDTH + SECOND_ENCODER_WIDTH,
    )
    torch.manual_seed(seed)
    vae = tiny_vae(scaling_factor=0.13025)  # SDXL's VAE's
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        tiny_text_config(FIRST_ENCODER_WIDTH, hidden_act="gelu", projection_dim=FIRST_ENCODER_WIDTH))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(
        tiny_text_config(SECOND_ENCODER_WIDTH, hidden_act="gelu", projection_dim=POOLED_WIDTH))
    return unet, vae, text_encoder, text_encoder_2, stable_diffusion_scheduler()


def write_tiny_sdxl(folder: Path, seed: int = 0, text_to_image: bool = False) -> Path:
    """Write the tiny SDXL pipeline as a diffusers folder (an inpainting pipeline's, or with
    ``text_to_image`` a 4-channel base pipeline's) and return the folder."""
    from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    folder = Path(folder)
    write_tokenizer(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer_2", pad_token="!")
    unet, vae, text_encoder, text_encoder_2, scheduler = build_tiny_sdxl(seed, text_to_image)
    parts = dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                 tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
                 tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"), unet=unet, scheduler=scheduler,
                 force_zeros_for_empty_prompt=True)
    if text_to_image:
        pipeline = StableDiffusionXLPipeline(**parts)
    else:  # as stable-diffusion-xl-1.0-inpainting-0.1's model_index.json
        pipeline = StableDiffusionXLInpaintPipeline(**parts, requires_aesthetics_score=False)
    pipeline.save_pretrained(folder)
    (folder / _STAMP).write_text(json.dumps({"family": "sdxl", "version": TINY_SDXL_VERSION, "seed": seed,
                                             "text_to_image": text_to_image}))
    return folder
